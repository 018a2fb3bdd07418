"""The messages the indexer receives, as pydantic models, and the order of S3 events.

Every delivery shape of an S3 event reaches :func:`parse_notification`: an S3 notification
directly or in an SQS message, inside an SNS envelope (or SNS raw delivery, which is the bare
notification), and an EventBridge "Object Created" / "Object Deleted" event delivered to SQS;
``s3:TestEvent`` in any of them is ignored. Plus the indexer's own messages: delayed sweeps and
continuations of a file too big for one invocation.
"""

from __future__ import annotations

import json
from typing import Any, Literal
from urllib.parse import unquote_plus

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class S3Object(_Loose):
    key: str
    size: int | None = None
    etag: str | None = Field(None, alias="eTag")
    version_id: str | None = Field(None, alias="versionId")
    sequencer: str | None = None


class S3Bucket(_Loose):
    name: str


class S3Entity(_Loose):
    bucket: S3Bucket
    object: S3Object


class S3Record(_Loose):
    event_source: Literal["aws:s3"] = Field(alias="eventSource")
    event_name: str = Field(alias="eventName")
    event_time: str | None = Field(None, alias="eventTime")
    s3: S3Entity


SEQ_WIDTH = 40  # S3 sequencers are ~16-20 hex digits; padding makes them comparable as strings


def normalize_sequencer(seq: str) -> str:
    """Right-padded to a fixed width, so plain string order (a keyword ``range``, a DynamoDB
    condition) is event order. S3 sequencers are hex strings of varying length; the S3 user guide
    (event message structure) says to right-pad the shorter with zeros and compare lexicographically."""
    seq = seq.upper()
    if not seq or len(seq) > SEQ_WIDTH or any(c not in "0123456789ABCDEF" for c in seq):
        raise ValueError(f"not an S3 sequencer: {seq[:50]!r}")
    return seq.ljust(SEQ_WIDTH, "0")


def sequencer_newer(candidate: str, current: str | None) -> bool:
    """Is ``candidate`` a later S3 event than ``current`` on the same key?"""
    return current is None or normalize_sequencer(candidate) > normalize_sequencer(current)


def sequencer_after(seq: str | None) -> str:
    """A sequencer just after ``seq`` and before any later real S3 event (for the backfill).

    Real sequencers end long before the padded width, so adding one in the padding orders us
    after ``seq`` (and after earlier backfills of it) but before the next real event.
    """
    base = normalize_sequencer(seq or "0")
    return f"{int(base, 16) + 1:0{SEQ_WIDTH}X}"


class ObjectEvent(BaseModel):
    """What the indexer acts on: one key's create or remove, with what orders it.

    ``reconcile``: a remove that names a version (versioned bucket: a version or a delete marker
    removed) or a delete marker created: S3 is asked what the key serves now. ``token`` and
    ``cursor``: a continuation of an upsert (its version token, and the chunks already written)."""

    action: Literal["upsert", "remove", "sweep"]
    bucket: str
    key: str  # URL-decoded
    etag: str | None = None
    version_id: str | None = None
    sequencer: str | None = None
    size: int | None = None
    reconcile: bool = False
    token: str | None = None
    cursor: int = 0
    restarts: int = 0

    @classmethod
    def from_record(cls, record: S3Record) -> ObjectEvent:
        name = record.event_name
        if name.startswith("ObjectCreated:"):
            action: Literal["upsert", "remove"] = "upsert"
        elif name.startswith("ObjectRemoved:") or name.startswith("LifecycleExpiration:"):
            action = "remove"
        else:
            raise ValueError(f"unsupported S3 event {name!r}")
        obj = record.s3.object
        return cls(
            action=action,
            bucket=record.s3.bucket.name,
            key=unquote_plus(obj.key),  # S3 URL-encodes keys in notifications, spaces as '+'
            etag=obj.etag.strip('"') if obj.etag else None,
            version_id=obj.version_id,
            sequencer=obj.sequencer,
            size=obj.size,
            # With a versionId, a remove may be of a non-current version or of a delete marker
            # (an undelete); a delete marker created leaves the key deleted. S3 user guide,
            # "Event notification types": ObjectRemoved:Delete / ObjectRemoved:DeleteMarkerCreated.
            reconcile=action == "remove" and obj.version_id is not None,
        )


class _EBObject(_Loose):
    key: str
    size: int | None = None
    etag: str | None = None
    version_id: str | None = Field(None, alias="version-id")
    sequencer: str | None = None


class _EBDetail(_Loose):
    bucket: S3Bucket
    object: _EBObject
    deletion_type: str | None = Field(None, alias="deletion-type")


class EventBridgeS3(_Loose):
    """An S3 event through EventBridge (S3 user guide, "EventBridge event message structure")."""

    source: Literal["aws.s3"]
    detail_type: str = Field(alias="detail-type")
    detail: _EBDetail

    def events(self) -> list[ObjectEvent]:
        if self.detail_type == "Object Created":
            action: Literal["upsert", "remove"] = "upsert"
        elif self.detail_type == "Object Deleted":
            action = "remove"
        else:  # restores, tags, ACLs, storage class changes: nothing to index
            return []
        obj = self.detail.object
        return [
            ObjectEvent(
                action=action,
                bucket=self.detail.bucket.name,
                key=obj.key,  # EventBridge's detail carries the key as is (the guide's examples)
                etag=obj.etag.strip('"') if obj.etag else None,
                version_id=obj.version_id,
                sequencer=obj.sequencer,
                size=obj.size,
                reconcile=action == "remove" and obj.version_id is not None,
            )
        ]


SWEEP = "qwenRagSweep"
CONTINUE = "qwenRagContinue"


def sweep_message(event: ObjectEvent) -> str:
    """A message the indexer sends itself: remove chunks of ``key`` older than ``sequencer`` once
    OpenSearch Serverless has made them searchable (it does so some seconds after a write)."""
    return json.dumps({SWEEP: {"bucket": event.bucket, "key": event.key, "sequencer": event.sequencer}})


def continuation_message(event: ObjectEvent) -> str:
    """A message the indexer sends itself: go on with ``event`` from its ``cursor``."""
    fields = {"bucket", "key", "etag", "version_id", "sequencer", "size", "token", "cursor", "restarts"}
    return json.dumps({CONTINUE: event.model_dump(include=fields)})


class BadEvent(ValueError):
    """A message that can never be processed (not JSON, an unknown shape): a poison record."""


def parse_notification(payload: dict[str, Any] | str, *, depth: int = 0) -> list[ObjectEvent]:
    """Object events in a message (dict or JSON text) of any delivery shape; ``[]`` for S3's test
    event and for S3 events that change no content. Raises :class:`BadEvent` for anything else."""
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise BadEvent(f"message body is not JSON ({exc.msg})") from None
        except RecursionError:  # json.loads on "[[[[…" nested past the interpreter's limit
            raise BadEvent("message body is JSON nested too deeply") from None
    if not isinstance(payload, dict):
        raise BadEvent("message body is not a JSON object")
    if payload.get("Event") == "s3:TestEvent":
        return []
    if payload.get("Type") == "Notification" and isinstance(payload.get("Message"), str) and depth < 2:
        # SNS → SQS without raw delivery: the S3 notification is the envelope's Message (SNS
        # developer guide, "Fanout to Amazon SQS queues": the message is JSON with Type and Message)
        return parse_notification(payload["Message"], depth=depth + 1)
    if payload.get("source") == "aws.s3" and "detail-type" in payload:
        try:
            return EventBridgeS3.model_validate(payload).events()
        except (ValidationError, ValueError) as exc:
            raise BadEvent(f"malformed EventBridge S3 event: {exc}".splitlines()[0]) from None
    for tag, action, what in ((SWEEP, "sweep", "sweep"), (CONTINUE, "upsert", "continuation")):
        if isinstance(own := payload.get(tag), dict):
            try:
                return [ObjectEvent(action=action, **own)]
            except (ValidationError, TypeError) as exc:
                raise BadEvent(f"malformed {what} message: {exc}".splitlines()[0]) from None
    records = payload.get("Records")
    if not isinstance(records, list) or not records:
        raise BadEvent("message has no S3 'Records'")
    try:
        return [ObjectEvent.from_record(S3Record.model_validate(r)) for r in records]
    except (ValidationError, ValueError) as exc:
        raise BadEvent(f"not an S3 object notification: {exc}".splitlines()[0]) from None
