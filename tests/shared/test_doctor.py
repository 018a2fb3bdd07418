"""doctor against the stand-ins: the default configuration passes in each region; a wrong key, model,
region, dimension, version or index fails the check that names it, with its fix, and exits 1."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rag_shared.config import Settings
from rag_shared.doctor import Doctor, build, main, mapping_problems
from rag_shared.errors import ConfigError
from rag_shared.store import VectorStore, index_body

from standins.dashscope import DashScopeStandIn
from standins.opensearch import OpenSearchStandIn


@pytest.fixture
def doctor_settings(make_settings: Any, dashscope: DashScopeStandIn, vector_store: OpenSearchStandIn) -> Any:
    def make(region: str = "ap-southeast-1", served_by: str | None = None, **overrides: Any) -> Settings:
        dashscope.region = served_by or region
        return make_settings(  # type: ignore[no-any-return]
            dashscope_region=region,
            opensearch_url=vector_store.url,
            opensearch_service="aoss" if vector_store.serverless else "es",
            **overrides,
        )

    return make


def run(settings: Settings, *, create_index: bool = True) -> tuple[int, str]:
    if create_index:
        VectorStore.from_settings(settings).ensure_index()  # as a stack that has indexed a file
    out = io.StringIO()
    code = main(out=out, settings_loader=lambda: settings)
    return code, out.getvalue()


def failed(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("[FAIL]")]


@pytest.mark.parametrize("region", ["ap-southeast-1", "cn-beijing", "cn-hongkong"])
def test_default_configuration_passes_in_each_region(region, doctor_settings, dashscope):
    code, text = run(doctor_settings(region))
    assert code == 0, text
    assert "all checks passed" in text
    for expected in (
        f"[ok] DashScope key works in {region}",
        f"[ok] embedding model text-embedding-v4 is offered in {region}",
        "[ok] dimension 1024 is valid",
        f"[ok] chat model qwen-plus is offered in {region}",
        "[ok] index ",
        "[ok] end to end",
    ):
        assert expected in text, (expected, text)
    assert {c.region for c in dashscope.calls()} == {region}


def test_a_key_from_another_region_fails_the_key_check(doctor_settings, dashscope):
    settings = doctor_settings()
    dashscope.api_keys = {"sk-a-beijing-key"}
    code, text = run(settings)
    assert code == 1
    (first, *rest) = failed(text)
    assert first.startswith("[FAIL] DashScope key works in ap-southeast-1")
    assert "a key works only in its own region" in text
    assert any(line.startswith("[FAIL] chat model") for line in rest)  # not checked without a key


def test_no_key_at_all_says_which_variable_to_set(doctor_settings):
    code, text = run(doctor_settings(dashscope_api_key=None))
    assert code == 1
    assert "[FAIL] DashScope key works in ap-southeast-1: No DashScope API key" in text
    assert "fix: set DASHSCOPE_API_KEY, or DASHSCOPE_SECRET_ARN" in text


def test_a_model_the_endpoint_does_not_serve_fails_the_model_check(doctor_settings):
    # configured for Beijing (v2 is valid there) but the endpoint is Singapore's, which lacks v2 and qwen-long
    settings = doctor_settings(
        "cn-beijing", served_by="ap-southeast-1", embedding_model="text-embedding-v2", chat_model="qwen-long"
    )
    code, text = run(settings)
    assert code == 1
    lines = failed(text)
    assert lines[0].startswith("[FAIL] embedding model text-embedding-v2 is offered in cn-beijing")
    assert any(line.startswith("[FAIL] chat model qwen-long") for line in lines)
    assert "set CHAT_MODEL to one the region serves" in text
    assert "[ok] DashScope key works" in text


def test_a_dimension_the_endpoint_lacks_fails_the_dimension_check(doctor_settings):
    settings = doctor_settings(
        "cn-beijing", served_by="ap-southeast-1", embedding_model="text-embedding-v3", embedding_dimensions=256
    )
    code, text = run(settings, create_index=False)
    assert code == 1
    assert failed(text)[0].startswith("[FAIL] dimension 256 is valid for text-embedding-v3")


def test_a_model_the_catalog_says_the_region_lacks_fails_before_any_call(doctor_settings, dashscope):
    with pytest.raises(ConfigError, match="qwen-long is offered only in cn-beijing"):
        doctor_settings(chat_model="qwen-long")
    out = io.StringIO()

    def loader() -> Settings:
        settings: Settings = doctor_settings(chat_model="qwen-long")
        return settings

    assert main(out=out, settings_loader=loader) == 1
    assert "[FAIL] configuration loads" in out.getvalue() and "DASHSCOPE_REGION=cn-beijing" in out.getvalue()
    assert dashscope.calls() == []


def test_an_index_built_for_another_size_or_auto_created_fails_the_mapping_check(doctor_settings, vector_store):
    settings = doctor_settings()
    store = VectorStore.from_settings(settings)
    store.client.indices.create(index=store.index, body={"mappings": {"properties": {"embedding": {"type": "float"}}}})
    code, text = run(settings, create_index=False)
    assert code == 1
    (line,) = [x for x in failed(text) if "mapping matches" in x]
    assert "embedding is float, not knn_vector" in line and "source_key is not mapped" in line
    assert "[FAIL] end to end" in text


def test_a_missing_index_says_to_index_a_file_first(doctor_settings):
    code, text = run(doctor_settings(), create_index=False)
    assert code == 1
    assert "not created yet" in text
    assert "upload one file to the documents bucket" in text


def test_an_opensearch_too_old_for_faiss_cosine_fails_the_version_check(doctor_settings, opensearch):
    settings = doctor_settings()
    doctor = build(settings)

    class OldDomain:  # the client as a 2.11 domain answers GET /; everything else goes to the stand-in
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def info(self) -> dict[str, Any]:
            return {"version": {"number": "2.11.0", "distribution": "opensearch"}}

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    old_domain: Any = OldDomain(doctor.store.client)
    store = VectorStore(old_domain, settings.opensearch_index, settings.dimensions, engine="faiss")
    report = Doctor(settings, doctor.dashscope, store).run()
    (bad,) = [c for c in report.checks if not c.ok and "supports the index method" in c.name]
    assert "faiss needs 2.19" in bad.detail and "OPENSEARCH_ENGINE=lucene" in bad.fix
    lucene = VectorStore(old_domain, settings.opensearch_index, settings.dimensions, engine="lucene")
    assert any(
        c.ok and "supports the index method" in c.name for c in Doctor(settings, doctor.dashscope, lucene).run().checks
    )


def test_mapping_problems_names_each_difference():
    want = index_body(1024, "faiss", serverless=False)["mappings"]["properties"]
    got = index_body(1536, "lucene", serverless=False)["mappings"]["properties"]
    problems = mapping_problems(got, want)
    assert problems == [
        "embedding has 1536 dimensions, the embedder makes 1024",
        "embedding uses engine lucene, the product expects faiss",
    ]
    assert mapping_problems(want, want) == []
