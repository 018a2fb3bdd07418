"""Build events from the JSON files in events/ (the ones `sam local invoke -e` takes)."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

from local.lambda_context import FakeContext

__all__ = ["FakeContext", "load", "s3_event", "sqs_event"]

EVENTS = Path(__file__).resolve().parents[1] / "events"


def load(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())  # type: ignore[no-any-return]


def s3_event(bucket: str, key: str, *, sequencer: str, etag: str | None = None, delete: bool = False) -> dict[str, Any]:
    event = load("s3-delete.json" if delete else "s3-put.json")
    record = event["Records"][0]
    record["s3"]["bucket"]["name"] = bucket
    record["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
    obj = record["s3"]["object"]
    obj["key"] = quote_plus(key, safe="/")
    obj["sequencer"] = sequencer
    if delete:
        obj.pop("eTag", None)
    else:
        obj["eTag"] = etag
    return event


def sqs_event(*bodies: dict[str, Any] | str) -> dict[str, Any]:
    template = load("sqs-s3-put.json")["Records"][0]
    records = []
    for body in bodies:
        r = copy.deepcopy(template)
        r["messageId"] = str(uuid.uuid4())
        r["body"] = body if isinstance(body, str) else json.dumps(body)
        records.append(r)
    return {"Records": records}
