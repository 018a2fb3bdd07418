"""Monotonic per-key S3 sequencers for the local stack, where moto's notifications carry none.

In AWS every S3 event carries a ``sequencer`` that orders events on one key, and a redelivered or
replayed event carries the same one; the indexer relies on both. moto omits it, so without this
every local retry would look like a new event. An event is identified by what S3 put in it
(bucket, key, event name and time, ETag, version): the same event always gets the same sequencer,
and a later one on the same key a larger one (event time in milliseconds, ties by first sight).
"""

from __future__ import annotations

import itertools
import json
import threading
from datetime import datetime
from typing import Any


class LocalSequencer:
    def __init__(self) -> None:
        self._seen: dict[tuple[Any, ...], str] = {}
        self._ticks = itertools.count()
        self._lock = threading.Lock()

    def _for(self, record: dict[str, Any]) -> str:
        obj, bucket = record["s3"]["object"], record["s3"]["bucket"]
        identity = (
            bucket.get("name"),
            obj.get("key"),
            record.get("eventName"),
            record.get("eventTime"),
            obj.get("eTag"),
            obj.get("versionId"),
        )
        with self._lock:
            if identity not in self._seen:
                when = str(record.get("eventTime") or "").replace("Z", "+00:00")
                try:
                    ms = int(datetime.fromisoformat(when).timestamp() * 1000)
                except ValueError:
                    ms = 0
                self._seen[identity] = f"{ms:012X}{next(self._ticks):08X}"
            return self._seen[identity]

    def stamp(self, body: str) -> str:
        """``body`` with a sequencer on every S3 record that lacks one; anything else unchanged."""
        try:
            payload = json.loads(body)
        except ValueError:
            return body
        records = payload.get("Records") if isinstance(payload, dict) else None
        if not isinstance(records, list):
            return body
        changed = False
        for r in records:
            obj = r.get("s3", {}).get("object") if isinstance(r, dict) and r.get("eventSource") == "aws:s3" else None
            if isinstance(obj, dict) and not obj.get("sequencer"):
                obj["sequencer"] = self._for(r)
                changed = True
        return json.dumps(payload) if changed else body


SEQUENCER = LocalSequencer()
