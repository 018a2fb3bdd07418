"""The indexer Lambda end to end: SQS-wrapped S3 events from events/, moto S3, the DashScope and
OpenSearch stand-ins over HTTP."""

from __future__ import annotations

import json
import logging

import pytest
from indexer import handler
from rag_shared.config import load_settings
from rag_shared.store import VectorStore, make_client

from standins.corpus import document, paragraph
from standins.dashscope import Fault, fake_embedding
from tests.events import FakeContext, load, sqs_event


def sixty_chunk_doc() -> str:
    return document(60)


def store_for(env) -> VectorStore:
    s = load_settings()
    st = VectorStore.from_settings(s)
    st.refresh()
    return st


def test_sixty_chunk_file_makes_exactly_three_embedding_calls(uploader, dashscope, indexer_env):
    result = uploader.run(uploader.put("docs/big.txt", sixty_chunk_doc()))
    assert result == {"batchItemFailures": []}
    calls = dashscope.calls("/embeddings")
    assert sorted(c.size for c in calls) == [10, 25, 25]
    assert all(c.size <= 25 for c in calls)
    assert store_for(indexer_env).count("docs/big.txt") == 60


def test_chunks_are_searchable_by_knn_afterwards(uploader, indexer_env):
    uploader.run(uploader.put("docs/big.txt", sixty_chunk_doc()))
    store = store_for(indexer_env)
    hits = store.search(fake_embedding(paragraph(17), 1536), 3)
    assert hits[0].source_key == "docs/big.txt"
    assert hits[0].chunk_number == 17
    assert hits[0].text.startswith("Part17 ")
    assert hits[0].score > hits[1].score
    assert hits[0].score == pytest.approx(1.0, abs=1e-6)  # cosine score (2 - d) / 2 of an identical vector


def test_overwrite_leaves_only_new_chunks(uploader, indexer_env):
    uploader.run(uploader.put("docs/a.txt", sixty_chunk_doc()))
    new_text = "\n\n".join(f"Version two paragraph {i}. " + paragraph(100 + i) for i in range(4))
    uploader.run(uploader.put("docs/a.txt", new_text))
    store = store_for(indexer_env)
    docs = [
        d
        for d in store.client.search(index=store.index, body={"size": 500, "query": {"match_all": {}}})["hits"]["hits"]
    ]
    texts = [d["_source"]["text"] for d in docs if d["_source"]["source_key"] == "docs/a.txt"]
    assert len(texts) == 4
    assert all(t.startswith("Version two") for t in texts)


def test_delete_leaves_no_chunks(uploader, indexer_env):
    uploader.run(uploader.put("docs/a.txt", sixty_chunk_doc()))
    uploader.run(uploader.delete("docs/a.txt"))
    store = store_for(indexer_env)
    assert store.count("docs/a.txt") == 0
    commit = store.commits.get("docs/a.txt")  # type: ignore[union-attr]
    assert commit is not None and commit.deleted


def test_replayed_event_changes_nothing_and_costs_nothing(uploader, dashscope, indexer_env):
    event = uploader.put("docs/a.txt", "Hello replay world. " * 20)
    uploader.run(event)
    before = len(dashscope.calls("/embeddings"))
    out = handler.lambda_handler(s3_direct := event, FakeContext())  # direct S3 delivery of the same event
    assert out["outcomes"][0]["action"] == "stale"
    uploader.run(s3_direct)
    assert len(dashscope.calls("/embeddings")) == before
    assert store_for(indexer_env).count("docs/a.txt") == 1


def test_out_of_order_delete_then_create_stays_deleted(uploader, indexer_env):
    create = uploader.put("docs/a.txt", "An early version. " * 10)
    delete = uploader.delete("docs/a.txt")
    uploader.run(delete)  # the later event arrives first
    result = uploader.run(create)
    assert result == {"batchItemFailures": []}
    assert store_for(indexer_env).count("docs/a.txt") == 0


def test_older_version_event_after_newer_changes_nothing(uploader, indexer_env, s3, bucket):
    old = uploader.put("docs/a.txt", "Old version text. " * 10)
    new = uploader.put("docs/a.txt", "New version text. " * 10)
    uploader.run(new)
    uploader.run(old)
    store = store_for(indexer_env)
    hits = store.search(fake_embedding("New version text.", 1536), 5)
    assert {h.text.split()[0] for h in hits} == {"New"}


def test_two_versions_processed_at_once_converge_on_the_newest(uploader, indexer_env):
    """The older invocation read its object and passed its check before the newer one finished;
    it finishes later. Its commit loses the compare-and-set: the newer version stays the only one."""
    from indexer.events import parse_notification
    from indexer.pipeline import UNKNOWN, Indexer

    old_text = "\n\n".join(paragraph(i) for i in range(6))
    old = parse_notification(uploader.put("docs/a.txt", old_text))[0]
    old_obj = uploader.s3.get_object(Bucket=uploader.bucket, Key="docs/a.txt")["Body"].read()
    new = parse_notification(uploader.put("docs/a.txt", "Only the new text. " * 5))[0]
    ix = handler.get_indexer()

    class LateCheck(Indexer):
        """Sees no commit at its first check: the view of an invocation that checked just before."""

        checks = 0

        def _applied(self, key, seq, known=UNKNOWN):
            self.checks += 1
            return None if self.checks == 1 else super()._applied(key, seq, known)

    assert ix.handle(new).action == "indexed"  # the newer invocation finishes first
    uploader.s3.put_object(Bucket=uploader.bucket, Key="docs/a.txt", Body=old_obj)
    late = LateCheck(ix.s3, ix.store, ix.embedder, ix.config)
    out = late.handle(old.model_copy(update={"etag": None}))
    assert late.checks == 1 and out.action == "superseded"
    store = store_for(indexer_env)
    commit = store.commits.get("docs/a.txt")  # type: ignore[union-attr]
    assert commit is not None and commit.sequencer.startswith(str(new.sequencer).upper())
    assert store.count("docs/a.txt") == 1 == commit.chunks
    assert [h.text for h in store.search(fake_embedding(paragraph(2), 1536), 5)] == [
        ("Only the new text. " * 5).strip()
    ]


def test_bulk_item_failures_are_retried_alone(uploader, vector_store, indexer_env):
    vector_store.bulk_items.clear()
    vector_store.fail_items(3, status=429)
    result = uploader.run(uploader.put("docs/big.txt", sixty_chunk_doc()))
    assert result == {"batchItemFailures": []}
    assert store_for(indexer_env).count("docs/big.txt") == 60
    # the first bulk carried the first window; a follow-up carried exactly the 3 failed items
    assert 3 in vector_store.bulk_items


def test_429_storm_is_survived(uploader, dashscope, indexer_env):
    dashscope.inject(Fault(status=429, code="Throttling.RateQuota", retry_after=0.05), times=8)
    result = uploader.run(uploader.put("docs/big.txt", sixty_chunk_doc()))
    assert result == {"batchItemFailures": []}
    assert len(dashscope.calls("/embeddings", status=429)) == 8
    assert store_for(indexer_env).count("docs/big.txt") == 60


@pytest.mark.parametrize(
    ("key", "body", "content_type", "reason"),
    [
        ("img/photo.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, None, "unsupported file type .png"),
        ("docs/blob.dat", b"abc\x00\x01\x02" * 100, None, "binary content"),
        ("docs/empty.txt", b"", None, "empty file"),
        ("docs/blank.md", b"   \n\n  ", None, "empty file"),
        ("docs/latin1.txt", "café crème brûlée".encode("latin-1"), None, "not valid UTF-8"),
        ("docs/huge.txt", b"a " * 150_000, None, "over the 200000-byte limit"),
    ],
    ids=["png", "binary", "empty", "blank", "bad-encoding", "oversized"],
)
def test_unindexable_files_are_skipped_with_a_reason(uploader, dashscope, caplog, key, body, content_type, reason):
    caplog.set_level(logging.INFO)
    result = uploader.run(uploader.put(key, body, content_type))
    assert result == {"batchItemFailures": []}  # not retried forever
    assert dashscope.calls("/embeddings") == []
    skipped = [r for r in caplog.records if r.getMessage() == "file skipped"]
    assert skipped and reason in skipped[0].__dict__["reason"]


def test_declared_charset_is_honoured(uploader, indexer_env):
    body = "中文文档，使用国标编码保存。".encode("gb18030")
    uploader.run(uploader.put("docs/gbk.txt", body, "text/plain; charset=gb18030"))
    hits = store_for(indexer_env).search(fake_embedding("中文文档，使用国标编码保存。", 1536), 1)
    assert hits and hits[0].text == "中文文档，使用国标编码保存。"


def test_overwrite_with_unindexable_file_removes_old_chunks(uploader, indexer_env):
    uploader.run(uploader.put("docs/a.txt", sixty_chunk_doc()))
    uploader.run(uploader.put("docs/a.txt", b""))
    assert store_for(indexer_env).count("docs/a.txt") == 0


def emf_metrics(stdout: str) -> dict[str, object]:
    """The metric values in Powertools' EMF lines (what CloudWatch would read from the log)."""
    values: dict[str, object] = {}
    for line in stdout.splitlines():
        if '"_aws"' in line:
            blob = json.loads(line)
            for m in blob["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
                value = blob[m["Name"]]
                values[m["Name"]] = value[0] if isinstance(value, list) and len(value) == 1 else value
    return values


def test_poison_records_go_to_the_dead_letter_queue_at_once_and_others_succeed(
    uploader, indexer_env, queues, capsys, caplog
):
    good = uploader.put("docs/good.txt", "A good document. " * 10)
    event = queues.event("this is not json", good, {"unexpected": "shape"})
    result = handler.lambda_handler(event, FakeContext())
    assert result == {"batchItemFailures": []}  # not retried: retries cannot fix them
    ids = [r["messageId"] for r in event["Records"]]
    assert store_for(indexer_env).count("docs/good.txt") == 1
    dead = queues.dead_letters()
    assert sorted(m["Body"] for m in dead) == sorted(['{"unexpected": "shape"}', "this is not json"])
    assert {m["MessageAttributes"]["sourceMessageId"]["StringValue"] for m in dead} == {ids[0], ids[2]}
    assert all(m["MessageAttributes"]["reason"]["StringValue"] for m in dead)
    metrics = emf_metrics(capsys.readouterr().out)
    assert (
        metrics["PoisonMessages"] == [1.0, 1.0] and metrics["FilesIndexed"] == 1.0 and metrics["RecordsFailed"] == 0.0
    )
    moved = [r.__dict__ for r in caplog.records if r.getMessage() == "poison message moved to the dead-letter queue"]
    # records run concurrently: the two lines may come in either order
    assert sorted((m["message_id"], m["levelname"], m["error"]) for m in moved) == sorted(
        [(ids[0], "ERROR", "BadEvent"), (ids[2], "ERROR", "BadEvent")]
    )
    assert not [r for r in caplog.records if r.getMessage().startswith("record failed")]


def test_an_all_bad_batch_does_not_raise(uploader, indexer_env, queues):
    event = queues.event("not json", "[1, 2]", {"Records": "nope"})
    assert handler.lambda_handler(event, FakeContext()) == {"batchItemFailures": []}
    assert len(queues.dead_letters()) == 3


def test_a_poison_message_is_retried_when_the_dead_letter_queue_cannot_be_reached(
    uploader, indexer_env, caplog, monkeypatch
):
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", "http://127.0.0.1:1/123456789012/no-such-queue")
    handler.reset()
    event = sqs_event("not json")
    result = handler.lambda_handler(event, FakeContext())
    assert [f["itemIdentifier"] for f in result["batchItemFailures"]] == [event["Records"][0]["messageId"]]
    assert any("could not be moved" in r.getMessage() for r in caplog.records)


def test_a_failed_file_is_logged_with_its_key_and_reason(uploader, dashscope, indexer_env, caplog, monkeypatch):
    monkeypatch.setenv("DASHSCOPE_MAX_RETRIES", "0")
    handler.reset()
    dashscope.inject(Fault(status=503, code="ServiceUnavailable"), times=1)
    assert len(uploader.run(uploader.put("docs/report.txt", "Quarterly numbers. " * 10))["batchItemFailures"]) == 1
    (failure,) = [r for r in caplog.records if r.getMessage().startswith("record failed")]
    assert failure.levelname == "ERROR" and failure.__dict__["s3_keys"] == ["docs/report.txt"]
    assert failure.__dict__["error"] and "Quarterly" not in caplog.text


def test_a_replayed_event_is_counted_as_ignored(uploader, indexer_env, capsys):
    event = uploader.put("docs/a.txt", "Some text. " * 10)
    uploader.run(event)
    capsys.readouterr()
    uploader.run(event)
    metrics = emf_metrics(capsys.readouterr().out)
    assert metrics == {"EventsIgnored": 1.0, "RecordsFailed": 0.0}


def test_s3_test_event_is_ignored(uploader):
    assert uploader.run({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}) == {"batchItemFailures": []}


def test_object_deleted_before_processing_is_not_a_failure(uploader, indexer_env):
    event = uploader.put("docs/gone.txt", "soon gone")
    uploader.s3.delete_object(Bucket=uploader.bucket, Key="docs/gone.txt")
    assert uploader.run(event) == {"batchItemFailures": []}
    assert store_for(indexer_env).count("docs/gone.txt") == 0


def test_dashscope_outage_fails_the_record_for_retry_then_it_succeeds(uploader, dashscope, indexer_env, monkeypatch):
    monkeypatch.setenv("DASHSCOPE_MAX_RETRIES", "1")
    handler.reset()
    event = uploader.put("docs/a.txt", "Some text to embed. " * 10)
    dashscope.inject(Fault(status=503, code="ServiceUnavailable"), times=2)
    # every record failed: reported item by item (no Lambda error); the record goes back to the queue
    assert len(uploader.run(event)["batchItemFailures"]) == 1
    assert uploader.run(event) == {"batchItemFailures": []}  # SQS redelivery
    assert store_for(indexer_env).count("docs/a.txt") == 1


def test_unchanged_chunks_are_not_embedded_again(uploader, dashscope, indexer_env):
    text = sixty_chunk_doc()
    uploader.run(uploader.put("docs/a.txt", text))
    dashscope.reset()
    uploader.run(uploader.put("docs/a.txt", text + "\n\nOne new paragraph at the end."))
    # the new sentence joins the last chunk: only that chunk changed, so only it is embedded
    assert [c.size for c in dashscope.calls("/embeddings")] == [1]
    store = store_for(indexer_env)
    assert store.count("docs/a.txt") == 60
    hits = store.search(fake_embedding(paragraph(59) + "\n\nOne new paragraph at the end.", 1536), 1)
    assert hits[0].chunk_number == 59 and hits[0].text.endswith("One new paragraph at the end.")


def test_bulk_requests_stay_under_the_request_size_limit(uploader, vector_store, indexer_env, monkeypatch):
    monkeypatch.setenv("MAX_FILE_BYTES", str(10**6))
    handler.reset()
    vector_store.bulk_bytes.clear()
    # 450 chunks: a 400-chunk window of 1536-d vectors is ~14 MB of JSON, over the 10 MiB limit
    assert uploader.run(uploader.put("docs/big.txt", document(450))) == {"batchItemFailures": []}
    assert store_for(indexer_env).count("docs/big.txt") == 450
    assert len(vector_store.bulk_bytes) >= 3 and max(vector_store.bulk_bytes) <= vector_store.max_content_length


def test_a_retried_record_leaves_no_duplicate_chunks(uploader, vector_store, indexer_env):
    event = uploader.put("docs/big.txt", sixty_chunk_doc())
    vector_store.fail_items(3, status=400)  # rejected for good: the record fails after 57 were written
    assert len(uploader.run(event)["batchItemFailures"]) == 1
    assert uploader.run(event) == {"batchItemFailures": []}  # SQS delivers it again
    store = store_for(indexer_env)
    hits = store.client.search(index=store.index, body={"size": 500, "query": {"term": {"source_key": "docs/big.txt"}}})
    numbers = sorted(h["_source"]["chunk_number"] for h in hits["hits"]["hits"])
    assert numbers == list(range(60))


def test_index_with_another_dimension_fails_clearly(uploader, index_name, indexer_env, caplog):
    from rag_shared.store import index_body

    make_client(load_settings()).indices.create(index=index_name, body=index_body(1024, "faiss", serverless=True))
    caplog.set_level(logging.ERROR)
    result = uploader.run(uploader.put("docs/a.txt", "text"))  # retried, then dead-lettered: not lost
    assert len(result["batchItemFailures"]) == 1
    (failure,) = [r for r in caplog.records if r.getMessage().startswith("record failed")]
    assert "1024-dimensional vectors but the embedding model produces 1536" in failure.__dict__["reason"]


def test_direct_s3_event_file_from_events_dir(indexer_env, s3, monkeypatch):
    """What `sam local invoke IndexerFunction -e events/s3-put.json` does."""
    event = load("s3-put.json")
    bucket = event["Records"][0]["s3"]["bucket"]["name"]
    s3.create_bucket(Bucket=bucket)
    put = s3.put_object(Bucket=bucket, Key="handbook/getting started.md", Body=b"# Start\n\nWelcome aboard.")
    event["Records"][0]["s3"]["object"]["eTag"] = put["ETag"].strip('"')
    out = handler.lambda_handler(event, FakeContext())
    assert out["outcomes"][0]["action"] == "indexed"
    assert out["outcomes"][0]["key"] == "handbook/getting started.md"  # '+' decoded to a space
    assert store_for(indexer_env).count("handbook/getting started.md") == 1


def test_logs_carry_counts_but_no_document_text_or_key(uploader, caplog, indexer_env):
    caplog.set_level(logging.DEBUG)
    uploader.run(uploader.put("docs/secret-plan.txt", "The launch code is PINEAPPLE-42. " * 5))
    text = caplog.text
    assert "PINEAPPLE-42" not in text
    assert indexer_env["DASHSCOPE_API_KEY"] not in text
    indexed = [r for r in caplog.records if r.getMessage() == "file indexed"]
    assert indexed and indexed[0].__dict__["chunks"] == 1 and indexed[0].__dict__["tokens"] > 0
    assert json.dumps(indexed[0].__dict__["estimated_cost_usd"])
