"""Per-key commit records in DynamoDB: which version of each S3 key readers may see.

A writer tags every chunk it writes with a fresh *version token*; nothing it writes is visible
until it commits that token here with a conditional write (compare-and-set on the S3 event's
sequencer). So an older event never replaces a newer commit, a second delivery of the same event
is a no-op, and a reader that keeps only chunks whose token is the committed one can never see a
partly written, superseded or failed version: consistency by construction, the same on an
OpenSearch domain and on Serverless (which has neither custom ids nor optimistic concurrency).

Table: partition key ``pk`` (S) only. ``pk`` is ``<index>/<S3 key>``: an index name may not hold
``/`` (OpenSearch index naming rules), and 255 + 1 + 1,024 bytes is well under DynamoDB's
2,048-byte partition key limit (DynamoDB developer guide, "Service, account, and table quotas":
partition key value length 1 to 2048 bytes). The index in the key keeps a new index (after
OPENSEARCH_INDEX changes) from inheriting commits that describe vectors it does not hold.

DynamoDB actions used: GetItem, PutItem (conditional), BatchGetItem, Scan (backfill listing).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from rag_shared.errors import RagError

log = logging.getLogger(__name__)

# BatchGetItem reads at most 100 items per request (DynamoDB API reference, BatchGetItem).
BATCH_GET_MAX = 100


class CommitStoreError(RagError):
    """DynamoDB failed for a reason a retry may fix (throttling, network)."""

    retryable = True


@dataclass(frozen=True)
class Commit:
    """The version of one key readers see. ``version`` is the token on its chunks (None: deleted
    or unindexable, so no chunk is visible). ``sequencer`` is normalized (fixed width), so plain
    string order is event order."""

    key: str
    sequencer: str
    version: str | None = None
    chunks: int = 0
    deleted: bool = False
    etag: str | None = None
    version_id: str | None = None
    reason: str | None = None
    updated_at: str = ""

    def shows(self, version: str | None) -> bool:
        """May a reader see a chunk tagged ``version``?"""
        return not self.deleted and self.version is not None and version == self.version


class CommitStore:
    """Commit records on a DynamoDB table (any boto3 DynamoDB client: AWS or moto)."""

    def __init__(self, client: Any, table: str, namespace: str, *, sleep: Callable[[float], None] = time.sleep):
        self.client = client
        self.table = table
        self.namespace = namespace
        self._sleep = sleep

    @classmethod
    def from_settings(cls, settings: Any, client: Any = None) -> CommitStore | None:
        """None when ``COMMIT_TABLE`` is unset (a reader then sees every chunk, as before)."""
        table = getattr(settings, "commit_table", None)
        if not table:
            return None
        if client is None:
            import boto3

            client = boto3.client("dynamodb")
        return cls(client, table, settings.opensearch_index)

    def pk(self, key: str) -> str:
        return f"{self.namespace}/{key}"

    # reads

    def get(self, key: str) -> Commit | None:
        item = self._call(
            "get commit",
            lambda: self.client.get_item(TableName=self.table, Key={"pk": {"S": self.pk(key)}}, ConsistentRead=True),
        ).get("Item")
        return _from_item(item) if item else None

    def get_many(self, keys: Iterable[str], *, consistent: bool = False) -> dict[str, Commit]:
        """Commits of ``keys`` (absent keys are missing from the result); BatchGetItem in 100s,
        unprocessed keys asked again with backoff. ``consistent``: strongly consistent reads, as
        :meth:`get` (BatchGetItem's ``ConsistentRead`` per table; eventually consistent by default,
        DynamoDB API reference, BatchGetItem / KeysAndAttributes)."""
        wanted = list(dict.fromkeys(keys))
        out: dict[str, Commit] = {}
        for start in range(0, len(wanted), BATCH_GET_MAX):
            request: dict[str, Any] = {
                self.table: {
                    "Keys": [{"pk": {"S": self.pk(k)}} for k in wanted[start : start + BATCH_GET_MAX]],
                    "ConsistentRead": consistent,
                }
            }
            for attempt in range(1, 8):
                result = self._call("read commits", lambda r=request: self.client.batch_get_item(RequestItems=r))  # type: ignore[misc]
                for item in result.get("Responses", {}).get(self.table, []):
                    commit = _from_item(item)
                    out[commit.key] = commit
                request = result.get("UnprocessedKeys") or {}
                if not request:
                    break
                self._sleep(min(0.05 * 2**attempt, 2.0))
            else:
                raise CommitStoreError("DynamoDB left commit reads unprocessed after 7 attempts")
        return out

    def scan(self) -> Iterator[Commit]:
        """Every commit of this index (the backfill compares them with the bucket)."""
        prefix = self.namespace + "/"
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "FilterExpression": "begins_with(pk, :p)",
            "ExpressionAttributeValues": {":p": {"S": prefix}},
        }
        while True:
            page = self._call("scan commits", lambda kw=kwargs: self.client.scan(**kw))  # type: ignore[misc]
            for item in page.get("Items", []):
                yield _from_item(item)
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    # writes

    def commit(self, record: Commit) -> bool:
        """Record ``record`` unless the key holds a commit of the same or a later event.

        Returns True when ``record`` is (now) the commit: also when it already was (the same
        version committed by an earlier try whose answer was lost). False: a later event, or
        another delivery of this event with another version, committed first."""
        record = replace(record, updated_at=datetime.now(UTC).isoformat())
        try:
            self._call(
                "commit",
                lambda: self.client.put_item(
                    TableName=self.table,
                    Item=_to_item(self.pk(record.key), record),
                    ConditionExpression="attribute_not_exists(pk) OR sequencer < :seq",
                    ExpressionAttributeValues={":seq": {"S": record.sequencer}},
                ),
                conditional=True,
            )
            return True
        except _ConditionFailed:
            current = self.get(record.key)
            return (
                current is not None
                and current.sequencer == record.sequencer
                and current.version == record.version
                and current.deleted == record.deleted
            )

    def _call(self, what: str, fn: Callable[[], Any], *, conditional: bool = False) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        for attempt in range(1, 6):
            try:
                return fn()
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if conditional and code == "ConditionalCheckFailedException":
                    raise _ConditionFailed from None
                if code not in _RETRY_CODES or attempt == 5:
                    raise CommitStoreError(f"DynamoDB {what} failed: {code}") from exc
            except BotoCoreError as exc:
                if attempt == 5:
                    raise CommitStoreError(f"DynamoDB {what} failed: {type(exc).__name__}") from exc
            log.warning("DynamoDB %s failed, retrying", what, extra={"attempt": attempt})
            self._sleep(min(0.1 * 2**attempt, 2.0))
        raise AssertionError("unreachable")


# Throttling and server errors a retry may fix (DynamoDB developer guide, "Error handling").
_RETRY_CODES = {
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
}


class _ConditionFailed(Exception):
    pass


def _to_item(pk: str, c: Commit) -> dict[str, Any]:
    item: dict[str, Any] = {
        "pk": {"S": pk},
        "key": {"S": c.key},
        "sequencer": {"S": c.sequencer},
        "chunks": {"N": str(c.chunks)},
        "deleted": {"BOOL": c.deleted},
        "updated_at": {"S": c.updated_at},
    }
    for name in ("version", "etag", "version_id", "reason"):
        value = getattr(c, name)
        if value is not None:
            item[name] = {"S": value}
    return item


def _from_item(item: dict[str, Any]) -> Commit:
    def s(name: str) -> str | None:
        v = item.get(name)
        return v["S"] if v else None

    return Commit(
        key=item["key"]["S"],
        sequencer=item["sequencer"]["S"],
        version=s("version"),
        chunks=int(item.get("chunks", {}).get("N", "0")),
        deleted=bool(item.get("deleted", {}).get("BOOL", False)),
        etag=s("etag"),
        version_id=s("version_id"),
        reason=s("reason"),
        updated_at=s("updated_at") or "",
    )


def visible(hits: Sequence[Any], commits: CommitStore, k: int) -> list[Any]:
    """The first ``k`` of ``hits`` (objects with ``source_key`` and ``version``) that belong to
    their key's committed version. A hit of a key without a commit, of a deleted key, or of any
    other version (uncommitted, superseded, a failed attempt) is dropped."""
    committed = commits.get_many(h.source_key for h in hits)
    out = []
    for h in hits:
        c = committed.get(h.source_key)
        if c is not None and c.shows(h.version):
            out.append(h)
            if len(out) == k:
                break
    return out


def create_table(client: Any, table: str) -> None:
    """The table as the template declares it (on demand, ``pk`` only): for tests and the local stack."""
    try:
        client.create_table(
            TableName=table,
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
    except client.exceptions.ResourceInUseException:
        pass


__all__ = ["BATCH_GET_MAX", "Commit", "CommitStore", "CommitStoreError", "create_table", "visible"]
