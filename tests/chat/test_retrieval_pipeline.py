"""Issue 16's retrieval pipeline (rewrite -> search -> rerank -> top k), through POST /v1/retrieve and
the chat stream, over the eval corpus indexed by the real indexer into the stand-ins."""

from __future__ import annotations

from pathlib import Path

import pytest
from chat.service import REWRITE_PROMPT, cited_numbers
from indexer.events import ObjectEvent
from indexer.pipeline import Indexer, IndexerConfig

from bench.eval import harness
from standins.dashscope import RERANK_PATH, Fault
from tests.sse import read_sse

QUESTIONS = harness.load_questions()
TEXTS = harness.corpus_texts()


@pytest.fixture
def settings(make_settings):
    return make_settings(dashscope_max_retries=1)  # a fault outlasts the retries quickly


@pytest.fixture
def corpus(settings, store, embedder, s3, bucket) -> list[str]:
    """samples/ and bench/eval/corpus/, indexed through the real indexer from moto S3."""
    ix = Indexer(s3, store, embedder, IndexerConfig(chunk_size=120, chunk_overlap=20))
    keys = []
    files = [("samples/", p) for p in sorted(harness.SAMPLES.iterdir())]
    files += [("corpus/", p) for p in sorted(harness.CORPUS.iterdir())]
    for n, (prefix, path) in enumerate(files):
        key = prefix + path.name
        put = s3.put_object(Bucket=bucket, Key=key, Body=Path(path).read_bytes())
        ev = ObjectEvent(action="upsert", bucket=bucket, key=key, etag=put["ETag"].strip('"'), sequencer=f"00A{n:04X}")
        action = ix.handle(ev).action
        if key.endswith(".metadata.json"):  # a sidecar: applied to its document's chunks, not indexed
            assert action == "metadata"
            continue
        assert action == "indexed"
        keys.append(key)
    store.refresh()
    return keys


def post(http):
    def call(body):
        r = http.post("/v1/retrieve", json=body)
        return r.status_code, r.json()

    return call


def test_rerank_reorders_the_search_candidates_by_relevance(http, corpus, dashscope):
    questions = [q for q in QUESTIONS if q.kind == "single"]
    reordered = 0
    for q in questions[:12]:
        plain = http.post("/v1/retrieve", json={"query": q.question, "top_k": 20, "rerank": False}).json()
        dashscope.reset()
        ranked = http.post("/v1/retrieve", json={"query": q.question, "top_k": 5, "rerank": True}).json()
        (call,) = dashscope.calls(RERANK_PATH)
        assert call.status == 200 and call.size == 20  # 4 x top_k candidates went to the reranker
        got = [(s["source_key"], s["chunk_number"]) for s in ranked["sources"]]
        candidates = [(s["source_key"], s["chunk_number"]) for s in plain["sources"]]
        assert len(got) == 5 and set(got) <= set(candidates)
        scores = [s["rerank_score"] for s in ranked["sources"]]
        assert scores == sorted(scores, reverse=True)
        assert ranked["usage"]["rerank_tokens"] == dashscope.rerank_tokens_total() > 0
        reordered += got != candidates[:5]
    assert reordered > 0  # the order changed where the lexical scorer disagrees with the search


def test_rerank_metrics_beat_search_order_on_the_eval_set(http, corpus):
    """On the stand-in, rerank (BM25) puts the labelled chunk higher than k-NN over word hashes."""
    single = [q for q in QUESTIONS if q.kind == "single"]
    off = harness.evaluate(post(http), single, "semantic", {"search_type": "semantic", "rerank": False}, TEXTS)
    on = harness.evaluate(post(http), single, "semantic+rerank", {"search_type": "semantic", "rerank": True}, TEXTS)
    assert on.mrr > off.mrr and on.recall >= off.recall


def test_hybrid_is_at_least_as_good_as_semantic_on_the_eval_set(http, corpus):
    """BM25 beside the word-hash k-NN: the rare codes and exact terms of the set rank higher."""
    single = [q for q in QUESTIONS if q.kind == "single"]
    semantic = harness.evaluate(post(http), single, "semantic", {"search_type": "semantic", "rerank": False}, TEXTS)
    hybrid = harness.evaluate(post(http), single, "hybrid", {"search_type": "hybrid", "rerank": False}, TEXTS)
    assert semantic.refused is None and hybrid.refused is None
    assert hybrid.recall >= semantic.recall and hybrid.mrr >= semantic.mrr
    assert (hybrid.recall, hybrid.mrr) != (semantic.recall, semantic.mrr)  # the fusion changed the order


@pytest.mark.parametrize(
    "fault",
    [
        Fault(status=500, path=RERANK_PATH),  # retried, then given up
        Fault(status=400, code="InvalidParameter", message="bad", path=RERANK_PATH),  # not retried
        Fault(kind="drop", path=RERANK_PATH),
    ],
)
def test_a_failing_rerank_falls_back_to_the_search_order_with_a_notice(http, corpus, dashscope, fault):
    body = {"query": "What does badge error E4012 mean?", "top_k": 5}
    plain = http.post("/v1/retrieve", json={**body, "rerank": False}).json()
    dashscope.reset()
    dashscope.inject(fault, times=5)
    r = http.post("/v1/retrieve", json={**body, "rerank": True})
    assert r.status_code == 200
    out = r.json()
    calls = dashscope.calls(RERANK_PATH)
    assert calls and all(c.status != 200 for c in calls)  # the fault fired on every try
    assert len(calls) == (1 if fault.status == 400 and fault.kind == "status" else 2)  # 1 retry configured
    assert any("reranking failed" in n for n in out["notices"])
    assert out["sources"] == plain["sources"] and out["usage"]["rerank_tokens"] == 0


def test_the_chat_answer_survives_a_rerank_failure(http, corpus, dashscope):
    dashscope.inject(Fault(status=503, path=RERANK_PATH), times=5)
    ask = {"messages": [{"role": "user", "content": "What does badge error E4012 mean?"}], "top_k": 3}
    with http.stream("POST", "/chat/completions/stream", json=ask) as r:
        events = list(read_sse(r))
    kinds = [e for e, _, _ in events]
    assert dashscope.calls(RERANK_PATH, status=503)
    assert "delta" in kinds and kinds[-2:] == ["usage", "done"] and "error" not in kinds
    assert any(e == "notice" and "reranking failed" in d["message"] for e, d, _ in events)


def test_rewrite_raises_follow_up_recall_on_the_eval_set(http, corpus, dashscope, settings):
    follow = [q for q in QUESTIONS if q.kind == "followup"]
    raw = harness.evaluate(post(http), follow, "raw", {"rewrite_query": False, "rerank": False}, TEXTS)
    assert not [b for b in dashscope.state.chat_bodies if b["messages"][0]["content"] == REWRITE_PROMPT]
    rewritten = harness.evaluate(post(http), follow, "rewritten", {"rewrite_query": True, "rerank": False}, TEXTS)
    assert rewritten.recall > raw.recall and rewritten.mrr > raw.mrr
    calls = [b for b in dashscope.state.chat_bodies if b["messages"][0]["content"] == REWRITE_PROMPT]
    assert len(calls) == len(follow)  # one cheap, short, non-streaming call per follow-up
    model = settings.rewrite_generator
    assert {c["model"] for c in calls} == {model.name} and model.name in ("qwen-flash", "qwen-turbo")
    assert all(not c["stream"] and c["max_tokens"] <= 96 and c["enable_thinking"] is False for c in calls)
    assert rewritten.rewrite_tokens > 0 and raw.rewrite_tokens == 0
    q = follow[0]
    assert rewritten.queries[q.id] != raw.queries[q.id] == q.messages[-1]["content"]


def test_a_failing_rewrite_searches_the_question_as_asked(http, corpus, dashscope):
    q = next(q for q in QUESTIONS if q.kind == "followup")
    dashscope.inject(Fault(status=500, path="/chat/completions"), times=5)
    out = http.post("/v1/retrieve", json={"messages": list(q.messages), "rerank": False}).json()
    assert dashscope.calls("/chat/completions", status=500)
    assert out["query"] == q.messages[-1]["content"] and out["rewritten"] is False
    assert any("could not be rewritten" in n for n in out["notices"])


def test_the_chat_stream_shows_the_rewritten_query_and_counts_it(http, corpus, dashscope):
    q = next(q for q in QUESTIONS if q.kind == "followup")
    with http.stream("POST", "/chat/completions/stream", json={"messages": list(q.messages)}) as r:
        events = list(read_sse(r))
    query = next(d for e, d, _ in events if e == "query")
    assert query["rewritten"] is True and query["original"] == q.messages[-1]["content"]
    assert query["query"].startswith(query["original"]) and len(query["query"]) > len(query["original"])
    usage = next(d for e, d, _ in events if e == "usage")
    assert usage["rewrite_tokens"] > 0 and "rewrite" in usage["latency_ms"]


def test_openai_clients_get_query_and_citations_as_extra_fields(http, corpus):
    question = "What does badge error E4012 mean?"
    ask = {"messages": [{"role": "user", "content": question}], "top_k": 3}
    r = http.post("/v1/chat/completions", json=ask).json()
    assert r["query"]["query"] == question
    answer = r["choices"][0]["message"]["content"]
    assert [c["n"] for c in r["citations"]] == cited_numbers(answer, len(r["sources"])) != []
    assert all(c in r["sources"] for c in r["citations"])


def test_citations_event_lists_the_sources_the_answer_cited(http, corpus):
    ask = {"messages": [{"role": "user", "content": "How long are nightly snapshots kept?"}], "top_k": 4}
    with http.stream("POST", "/chat/completions/stream", json=ask) as r:
        events = list(read_sse(r))
    kinds = [e for e, _, _ in events]
    assert kinds.index("citations") > max(i for i, k in enumerate(kinds) if k == "delta")
    answer = "".join(d["text"] for e, d, _ in events if e == "delta")
    sources = next(d for e, d, _ in events if e == "sources")["sources"]
    cited = next(d for e, d, _ in events if e == "citations")["citations"]
    assert cited and [c["n"] for c in cited] == cited_numbers(answer, len(sources))
    assert all(c == sources[c["n"] - 1] for c in cited)


def test_cited_numbers_parses_the_markers_the_prompt_asks_for():
    text = "Meals [2]. Travel [1][3], also [2, 4] and [4，1]; not a citation: [9], [0], [x], [12345]."
    assert cited_numbers(text, 4) == [2, 1, 3, 4]
    assert cited_numbers("no markers", 3) == []


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({}, 422),  # neither query nor messages
        ({"query": "a", "messages": [{"role": "user", "content": "a"}]}, 422),
        ({"query": "   "}, 422),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, 422),
        ({"query": "a", "top_k": 51}, 422),
        ({"query": "a", "rerank": "sometimes"}, 422),
        ({"query": "a", "filter": {"keys": "not-a-list"}}, 422),
        ({"query": "a", "use_rag": False}, 422),
        ({"query": "a", "unknown_field": 1}, 422),
        ({"query": "x" * 40_000}, 422),
    ],
)
def test_retrieve_refuses_bad_bodies_with_a_reason(http, body, status):
    r = http.post("/v1/retrieve", json=body)
    assert r.status_code == status
    assert r.json()["error"]["message"]


def test_retrieve_with_rerank_forced_but_none_configured_is_a_400(make_settings, client, embedder, store):
    import httpx
    from chat.app import create_app
    from chat.service import ChatDeps
    from chat.settings import ChatSettings

    from local.servers import AppServer
    from tests.chat.conftest import TOKEN

    deps = ChatDeps(make_settings(rerank_model=""), client, embedder, store)
    with AppServer(create_app(deps, ChatSettings(chat_auth_mode="token", chat_api_token=TOKEN))) as srv:
        r = httpx.post(
            f"{srv.url}/v1/retrieve", json={"query": "a", "rerank": True}, headers={"Authorization": f"Bearer {TOKEN}"}
        )
    assert r.status_code == 400 and "RERANK_MODEL" in r.json()["error"]["message"]


def test_the_harness_metrics_follow_their_definitions(http, corpus):
    subset = [q for q in QUESTIONS if q.kind in ("single", "none")][:10] + QUESTIONS[-2:]
    seen = []

    def recording(body):
        status, out = post(http)(body)
        seen.append(out)
        return status, out

    result = harness.evaluate(recording, subset, "knn", {"rerank": False}, TEXTS)
    answerable = [q for q in subset if q.kind != "none"]
    ranks = []
    for q, out in zip(subset, seen, strict=True):
        if q.kind == "none":
            continue
        label = q.relevant[0]
        rank = next(
            (
                i
                for i, s in enumerate(out["sources"], start=1)
                if s["source_key"] == label.key
                and (label.quote not in TEXTS[label.key] or label.quote in TEXTS[label.key][s["start"] : s["end"]])
            ),
            None,
        )
        ranks.append(rank)
    assert result.ranks == ranks and len(ranks) == len(answerable)
    assert result.recall == sum(r is not None and r <= 5 for r in ranks) / len(ranks)
    assert result.mrr == pytest.approx(sum(1 / r for r in ranks if r) / len(ranks))
    assert result.unanswerable == 2 and result.questions == len(subset)
    assert harness.recall_at([1, None, 3, 6], 5) == 0.5
    assert harness.mrr([1, None, 2, 4]) == pytest.approx((1 + 0.5 + 0.25) / 4)


def test_the_harness_reports_a_refused_mode_instead_of_failing(http, corpus):
    """search_type comes with the hybrid branch: until then the server refuses it, and the harness says so."""
    single = [q for q in QUESTIONS if q.kind == "single"][:2]
    result = harness.evaluate(post(http), single, "hybrid", {"search_type": "hybrid", "bogus_mode": 1}, TEXTS)
    assert result.refused and result.refused.startswith("422") and "refused by the server" in result.line()


def test_openai_stream_carries_query_first_and_citations_on_the_finishing_chunk(http, corpus):
    import json

    question = "How long are nightly snapshots kept?"
    ask = {"messages": [{"role": "user", "content": question}], "top_k": 3, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=ask) as r:
        chunks = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: {")]
    assert chunks[0]["query"]["query"] == question and chunks[0]["sources"]
    finishing = next(c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"])
    answer = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert [c["n"] for c in finishing["citations"]] == cited_numbers(answer, len(chunks[0]["sources"]))


def test_rerank_and_rewrite_figures_reach_the_metrics(http, corpus, deps):
    seen: list[dict[str, tuple[object, float]]] = []
    deps.metrics = lambda model, figures: seen.append(dict(figures))
    q = next(q for q in QUESTIONS if q.kind == "followup")
    with http.stream("POST", "/chat/completions/stream", json={"messages": list(q.messages), "rerank": True}) as r:
        usage = next(d for e, d, _ in read_sse(r) if e == "usage")
    (figures,) = seen
    assert figures["RerankTokens"][1] == usage["rerank_tokens"] > 0 and figures["RerankFallback"][1] == 0
    assert figures["RewriteTokens"][1] == usage["rewrite_tokens"] > 0 and figures["RewriteFallback"][1] == 0
    assert figures["EstimatedCostUSD"][1] == pytest.approx(usage["estimated_cost_usd"], abs=1e-8)
    assert "RerankMs" in figures and "RewriteMs" in figures
