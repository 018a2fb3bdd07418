"""Pydantic models of the S3 event notifications the indexer receives, directly or inside SQS."""

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


class ObjectEvent(BaseModel):
    """What the indexer acts on: one key's create or remove, with what orders it."""

    action: Literal["upsert", "remove", "sweep"]
    bucket: str
    key: str  # URL-decoded
    etag: str | None = None
    version_id: str | None = None
    sequencer: str | None = None
    size: int | None = None

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
        )


SWEEP = "qwenRagSweep"


def sweep_message(event: ObjectEvent) -> str:
    """A message the indexer sends itself: remove chunks of ``key`` older than ``sequencer`` once
    OpenSearch Serverless has made them searchable (it does so some seconds after a write)."""
    return json.dumps({SWEEP: {"bucket": event.bucket, "key": event.key, "sequencer": event.sequencer}})


class BadEvent(ValueError):
    """A message that is not an S3 notification: a poison record."""


def parse_notification(payload: dict[str, Any] | str) -> list[ObjectEvent]:
    """Object events in an S3 notification (dict or JSON text); ``[]`` for S3's test event."""
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise BadEvent(f"message body is not JSON ({exc.msg})") from None
    if not isinstance(payload, dict):
        raise BadEvent("message body is not a JSON object")
    if payload.get("Event") == "s3:TestEvent":
        return []
    if isinstance(sweep := payload.get(SWEEP), dict):
        try:
            return [ObjectEvent(action="sweep", **sweep)]
        except ValidationError as exc:
            raise BadEvent(f"malformed sweep message: {exc}".splitlines()[0]) from None
    records = payload.get("Records")
    if not isinstance(records, list) or not records:
        raise BadEvent("message has no S3 'Records'")
    try:
        return [ObjectEvent.from_record(S3Record.model_validate(r)) for r in records]
    except (ValidationError, ValueError) as exc:
        raise BadEvent(f"not an S3 object notification: {exc}".splitlines()[0]) from None
