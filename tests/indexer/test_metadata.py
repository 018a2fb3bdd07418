"""Metadata sidecars (``<key>.metadata.json``, Bedrock Knowledge Bases style) and S3 user metadata:
parsing and limits, then the indexer against a domain and a Serverless collection: chunks carry the
metadata, a sidecar change updates them without re-embedding, and duplicate, reordered and racing
deliveries of the sidecar and the document converge on what S3 serves."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from indexer.events import parse_notification
from indexer.metadata import (
    MAX_SIDECAR_BYTES,
    from_user_metadata,
    is_sidecar,
    merge,
    parse_sidecar,
)
from indexer.pipeline import Indexer, Written

from standins.corpus import document
from standins.opensearch import OpenSearchStandIn
from tests.events import s3_event
from tests.indexer.conftest import Uploader, next_seq
from tests.indexer.test_consistency import consistent, containers
from tests.indexer.test_handler import store_for

# parsing (pure)


def sidecar(attributes: Any) -> bytes:
    return json.dumps({"metadataAttributes": attributes}).encode()


def test_plain_values_are_kept_with_their_types():
    md = parse_sidecar(sidecar({"dept": "hr", "year": 2024, "score": 4.5, "public": True, "tags": ["a", "b"]}))
    assert md.values == {"dept": "hr", "year": 2024, "score": 4.5, "public": True, "tags": ["a", "b"]}
    assert isinstance(md.values["year"], int) and isinstance(md.values["public"], bool)
    assert md.warnings == ()


def test_the_typed_form_of_each_type_is_read_and_include_for_embedding_accepted():
    md = parse_sidecar(
        sidecar(
            {
                "s": {"value": {"type": "STRING", "stringValue": "x"}, "includeForEmbedding": True},
                "n": {"value": {"type": "NUMBER", "numberValue": 3}, "includeForEmbedding": False},
                "b": {"value": {"type": "BOOLEAN", "booleanValue": False}},
                "l": {"value": {"type": "STRING_LIST", "stringListValue": ["p", "q"]}},
            }
        )
    )
    assert md.values == {"s": "x", "n": 3, "b": False, "l": ["p", "q"]}
    assert md.warnings == ()


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        ({"bad name": "x"}, "is not 1-100 of"),
        ({"x" * 101: "x"}, "is not 1-100 of"),
        ({"名前": "x"}, "is not 1-100 of"),
        ({"nested": {"a": 1}}, "nested objects are not supported"),
        ({"nul": None}, "null or unsupported"),
        ({"mixed": ["a", 1]}, "only strings"),
        ({"long": "x" * 2049}, "1-2048 characters"),
        ({"many": [str(i) for i in range(11)]}, "1-10 strings"),
        ({"big": 2**63}, "64-bit"),
        ({"t": {"value": {"type": "DATE", "stringValue": "x"}}}, "needs type STRING"),
        ({"t": {"value": {"type": "NUMBER", "stringValue": "3"}}}, "wrong type"),
        ({"t": {"value": {"type": "BOOLEAN", "booleanValue": "yes"}}}, "wrong type"),
    ],
)
def test_a_refused_attribute_is_dropped_with_its_reason_and_the_others_kept(attributes, reason):
    md = parse_sidecar(sidecar({"ok": "kept", **attributes}))
    assert md.values == {"ok": "kept"}
    assert len(md.warnings) == 1 and reason in md.warnings[0], md.warnings


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{not json", "not valid UTF-8 JSON"),
        (b'{"metadataAttributes": {"x": NaN}}', "not valid UTF-8 JSON"),
        (b"\xff\xfe\x00", "not valid UTF-8 JSON"),
        (b'{"attributes": {"x": 1}}', 'no "metadataAttributes"'),
        (b'["metadataAttributes"]', 'no "metadataAttributes"'),
        (sidecar({"pad": "x" * MAX_SIDECAR_BYTES}), "over the 10240-byte limit"),
    ],
)
def test_a_malformed_or_oversized_sidecar_gives_nothing_and_says_why(data, reason):
    md = parse_sidecar(data)
    assert md.values == {}
    assert len(md.warnings) == 1 and reason in md.warnings[0], md.warnings


def test_a_sidecar_of_exactly_the_limit_is_read_and_one_byte_more_is_not():
    body = sidecar({"a": "x"})
    body += b" " * (MAX_SIDECAR_BYTES - len(body))
    assert parse_sidecar(body).values == {"a": "x"}
    assert parse_sidecar(body + b" ").values == {}


def test_user_metadata_are_strings_decoded_from_rfc2047_and_the_sidecar_wins():
    user = from_user_metadata({"dept": "sales", "year": "2024", "city": "=?UTF-8?B?5YyX5Lqs?=", "bad name": "x"})
    assert user.values == {"dept": "sales", "year": "2024", "city": "北京"}
    assert len(user.warnings) == 1 and "S3 user metadata" in user.warnings[0]
    both = merge(user, parse_sidecar(sidecar({"dept": "hr", "year": 2025})))
    assert both.values == {"dept": "hr", "year": 2025, "city": "北京"}


def test_sidecar_names():
    assert is_sidecar("a/b.pdf.metadata.json") and is_sidecar("x.metadata.json")
    assert not is_sidecar(".metadata.json") and not is_sidecar("a/b.pdf") and not is_sidecar("metadata.json")


# the indexer, on a domain and on Serverless (vector_store is parametrized)

KEY = "docs/policy.txt"


def chunk_metadata(vector_store: Any, index: str, key: str) -> list[dict[str, Any]]:
    """The ``metadata`` of every stored chunk of ``key``."""
    return [d.get("metadata", {}) for d in vector_store.docs(index).values() if d["source_key"] == key]


def put(uploader: Uploader, key: str, body: bytes | str, **user: str) -> dict[str, Any]:
    data = body.encode() if isinstance(body, str) else body
    etag = uploader.s3.put_object(Bucket=uploader.bucket, Key=key, Body=data, Metadata=user)["ETag"].strip('"')
    return s3_event(uploader.bucket, key, sequencer=next_seq(), etag=etag)


def put_sidecar(uploader: Uploader, key: str, attributes: Any) -> dict[str, Any]:
    return put(uploader, key + ".metadata.json", sidecar(attributes))


def test_chunks_carry_sidecar_over_user_metadata_and_the_sidecar_is_never_a_document(
    uploader, vector_store, index_name, indexer_env
):
    side = put_sidecar(uploader, KEY, {"dept": "hr", "year": 2024, "tags": ["leave"]})
    result = uploader.run(put(uploader, KEY, document(5), dept="sales", owner="ann"), side)
    assert result == {"batchItemFailures": []}
    metas = chunk_metadata(vector_store, index_name, KEY)
    assert len(metas) == 5
    assert all(m == {"dept": "hr", "owner": "ann", "year": 2024, "tags": ["leave"]} for m in metas)
    store = store_for(indexer_env)
    assert store.count(KEY + ".metadata.json") == 0
    # the sidecar's own record (so a backfill finds it unchanged) names no version and no chunk
    record = store.commits.get(KEY + ".metadata.json")  # type: ignore[union-attr]
    assert record is not None and record.version is None and record.chunks == 0 and record.etag
    consistent(store, KEY)


def test_a_sidecar_change_updates_metadata_without_embedding_again(
    uploader, vector_store, index_name, indexer_env, dashscope
):
    uploader.run(put(uploader, KEY, document(4), dept="sales"))
    vectors = {i: d["embedding"] for i, d in vector_store.docs(index_name).items()}
    calls = len(dashscope.state.calls)
    uploader.run(put_sidecar(uploader, KEY, {"dept": "hr", "level": 3}))
    assert chunk_metadata(vector_store, index_name, KEY) == [{"dept": "hr", "level": 3}] * 4
    # the sidecar loses an attribute: it is removed, not merged
    uploader.run(put_sidecar(uploader, KEY, {"level": 4}))
    assert chunk_metadata(vector_store, index_name, KEY) == [{"dept": "sales", "level": 4}] * 4
    # deleting the sidecar leaves the user metadata
    uploader.s3.delete_object(Bucket=uploader.bucket, Key=KEY + ".metadata.json")
    uploader.run(s3_event(uploader.bucket, KEY + ".metadata.json", sequencer=next_seq(), delete=True))
    assert chunk_metadata(vector_store, index_name, KEY) == [{"dept": "sales"}] * 4
    assert len(dashscope.state.calls) == calls, "a metadata change must not call the embedding API"
    assert {i: d["embedding"] for i, d in vector_store.docs(index_name).items()} == vectors
    consistent(store_for(indexer_env), KEY)


def test_a_malformed_sidecar_still_indexes_the_document_with_a_warning(uploader, vector_store, index_name):
    (ix,) = containers(1)
    put(uploader, KEY + ".metadata.json", b'{"metadataAttributes": {"ok": 1, "bad": {"x": 1}}}')
    (event,) = parse_notification(put(uploader, KEY, document(3)))
    outcome = ix.handle(event)
    assert outcome.action == "indexed" and outcome.chunks == 3
    assert any("bad: nested objects are not supported" in w for w in outcome.warnings), outcome.warnings
    assert chunk_metadata(vector_store, index_name, KEY) == [{"ok": 1}] * 3
    uploader.s3.put_object(Bucket=uploader.bucket, Key=KEY + ".metadata.json", Body=b"{broken")
    (side,) = parse_notification(s3_event(uploader.bucket, KEY + ".metadata.json", sequencer=next_seq()))
    outcome = ix.handle(side)
    assert outcome.action == "metadata" and "not valid UTF-8 JSON" in outcome.warnings[0]
    assert chunk_metadata(vector_store, index_name, KEY) == [{}] * 3


def test_sidecar_events_duplicated_and_reordered_converge_on_the_current_sidecar(
    uploader, vector_store, index_name, indexer_env
):
    v1 = put_sidecar(uploader, KEY, {"rev": 1})  # arrives before its document: nothing to update yet
    (early,) = parse_notification(v1)
    (ix,) = containers(1)
    assert ix.handle(early).action == "deferred"
    v2 = put_sidecar(uploader, KEY, {"rev": 2})
    doc = put(uploader, KEY, document(3))
    v3 = put_sidecar(uploader, KEY, {"rev": 3})
    # every delivery, newest sidecar event first, each twice, the document in the middle
    uploader.run(v3, v1, doc, v2, v3, v1, v2)
    assert chunk_metadata(vector_store, index_name, KEY) == [{"rev": 3}] * 3
    consistent(store_for(indexer_env), KEY)


def test_a_sidecar_changed_while_its_document_is_written_ends_in_the_chunks(
    uploader, vector_store, index_name, indexer_env
):
    """The document's indexing read sidecar rev 1; rev 2 is written and its event handled (finding
    no commit yet) before the document commits: the indexing reads the sidecar again after its
    commit and applies rev 2."""
    put_sidecar(uploader, KEY, {"rev": 1})
    (doc,) = parse_notification(put(uploader, KEY, document(4)))
    a, b = containers(2)
    fired: list[str] = []

    class Racing(Indexer):
        def _written(self, key: str, token: str, expected: int) -> Written:
            if not fired:
                (side,) = parse_notification(put_sidecar(uploader, KEY, {"rev": 2}))
                fired.append(b.handle(side).action)
            return super()._written(key, token, expected)

    racing = Racing(a.s3, a.store, a.embedder, a.config)
    assert racing.handle(doc).action == "indexed"
    assert fired == ["deferred"], "the sidecar event must have run before the commit"
    assert chunk_metadata(vector_store, index_name, KEY) == [{"rev": 2}] * 4
    consistent(store_for(indexer_env), KEY)


def test_a_late_write_of_an_older_sidecar_is_repaired_by_its_own_writer(uploader, vector_store, index_name):
    """Two sidecar events at once: A reads rev 1, then rev 2 is written and B applies it; A's rev-1
    update lands last, so A reads the sidecar again, sees rev 2 and applies it."""
    put_sidecar(uploader, KEY, {"rev": 0})
    uploader.run(put(uploader, KEY, document(3)))
    put_sidecar(uploader, KEY, {"rev": 1})
    (side,) = parse_notification(s3_event(uploader.bucket, KEY + ".metadata.json", sequencer=next_seq()))
    a, b = containers(2)
    written: list[Any] = []

    class Slow(Indexer):
        def _read_sidecar(self, bucket: str, key: str) -> Any:
            md = super()._read_sidecar(bucket, key)
            if not written:  # after A's first read: B applies a newer sidecar before A writes
                written.append(md.values)
                put_sidecar(uploader, KEY, {"rev": 2})
                assert b.handle(side).action == "metadata"
                assert chunk_metadata(vector_store, index_name, KEY) == [{"rev": 2}] * 3
            return md

    slow = Slow(a.s3, a.store, a.embedder, a.config)
    assert slow.handle(side).action == "metadata"
    assert written == [{"rev": 1}]
    assert chunk_metadata(vector_store, index_name, KEY) == [{"rev": 2}] * 3


def test_an_older_commit_is_never_updated_from_a_newer_documents_user_metadata(uploader, vector_store, index_name):
    """A sidecar event reads the user metadata of the committed version only: when S3 already serves
    a newer document, the newer document's own event applies both."""
    uploader.run(put(uploader, KEY, document(3), dept="old"))
    newer = put(uploader, KEY, document(4), dept="new")  # its event not delivered yet
    uploader.run(put_sidecar(uploader, KEY, {"rev": 1}))
    assert chunk_metadata(vector_store, index_name, KEY) == [{"dept": "old"}] * 3
    uploader.run(newer)
    assert chunk_metadata(vector_store, index_name, KEY) == [{"dept": "new", "rev": 1}] * 4


@pytest.fixture
def lagging() -> Iterator[OpenSearchStandIn]:
    """A Serverless stand-in whose writes become searchable only on ``refresh_all``."""
    server = OpenSearchStandIn(serverless=True, refresh_interval=None).start()
    yield server
    server.stop()


@pytest.fixture
def queue(aws: str) -> str:
    import boto3

    sqs = boto3.client("sqs", region_name="us-east-1")
    return str(sqs.create_queue(QueueName=f"metadata-sweep-{id(sqs)}")["QueueUrl"])


def test_on_serverless_the_sweep_updates_chunks_a_sidecar_event_could_not_see_yet(
    monkeypatch, aws, commit_table, dashscope, lagging, index_name, s3, bucket, queue
):
    """Serverless makes writes searchable seconds later, so the sidecar event's search misses the
    chunks just written; the delayed sweep (of the document and of the sidecar) applies it then."""
    import boto3

    from local.sqs_pump import drain
    from tests.indexer.test_serverless_sweep import _env

    _env(monkeypatch, dashscope, lagging.url, "aoss", index_name, queue)
    up = Uploader(s3, bucket)
    up.run(put_sidecar(up, KEY, {"rev": 1}), put(up, KEY, document(3)))
    up.run(put_sidecar(up, KEY, {"rev": 2}))  # its search finds nothing searchable yet
    assert chunk_metadata(lagging, index_name, KEY) == [{"rev": 1}] * 3  # the race
    lagging.refresh_all()
    assert drain(boto3.client("sqs", region_name="us-east-1"), queue, timeout=30) >= 2
    assert chunk_metadata(lagging, index_name, KEY) == [{"rev": 2}] * 3


def test_a_retry_after_a_failed_metadata_update_applies_the_sidecar(uploader, vector_store, index_name, indexer_env):
    """The sidecar changed while the document was written, and the update after the commit failed
    (OpenSearch unavailable): the retry of the same event finds it committed and applies the sidecar."""
    from rag_shared.errors import StoreError

    put_sidecar(uploader, KEY, {"rev": 1})
    (doc,) = parse_notification(put(uploader, KEY, document(3)))
    a, b = containers(2)
    faults: list[str] = []

    class Failing(Indexer):
        def _written(self, key: str, token: str, expected: int) -> Written:
            (side,) = parse_notification(put_sidecar(uploader, KEY, {"rev": 2}))
            assert b.handle(side).action == "deferred"  # no commit yet
            return super()._written(key, token, expected)

    update = a.store.update_metadata

    def fail_once(key: str, version: str, metadata: Any) -> int:
        if not faults:
            faults.append(version)
            raise StoreError("OpenSearch update metadata failed: 503")
        return update(key, version, metadata)

    a.store.update_metadata = fail_once  # type: ignore[method-assign]
    with pytest.raises(StoreError):
        Failing(a.s3, a.store, a.embedder, a.config).handle(doc)
    assert faults and chunk_metadata(vector_store, index_name, KEY) == [{"rev": 1}] * 3  # committed, stale
    assert a.handle(doc).action == "stale"  # the redelivery
    assert chunk_metadata(vector_store, index_name, KEY) == [{"rev": 2}] * 3
    consistent(store_for(indexer_env), KEY)


def test_the_sample_sidecar_of_the_local_demo_is_read_whole():
    from pathlib import Path

    data = (Path(__file__).parents[2] / "samples" / "handbook.md.metadata.json").read_bytes()
    md = parse_sidecar(data)
    assert md.warnings == ()
    assert md.values["year"] == 2024 and md.values["owner"] == "people-team"
