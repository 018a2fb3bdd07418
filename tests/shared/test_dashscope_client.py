import asyncio
import json
import time

import boto3
import pytest
from aws_lambda_powertools.utilities.parameters import SecretsProvider
from rag_shared.dashscope import ChatParams, DashScopeClient, ReasoningDelta, StreamEnd, TextDelta
from rag_shared.errors import (
    BadRequestError,
    ContentModerationError,
    ContextLengthExceededError,
    InvalidApiKeyError,
    ModelNotFoundError,
    ServiceUnavailableError,
    ThrottledError,
)
from rag_shared.secrets import ApiKeyProvider

from standins.dashscope import Fault

HELLO = [{"role": "user", "content": "hello there"}]


def test_retries_429_honouring_retry_after(client, settings, dashscope):
    dashscope.inject(Fault(status=429, code="Throttling.RateQuota", retry_after=0.4), times=2)
    t0 = time.monotonic()
    out = client.complete(HELLO, settings.generator, ChatParams())
    elapsed = time.monotonic() - t0
    assert out.text
    assert [c.status for c in dashscope.calls("/chat/completions")] == [429, 429, 200]
    assert elapsed >= 0.8  # waited Retry-After twice


@pytest.mark.parametrize(
    "fault",
    [Fault(status=500), Fault(status=503, code="ServiceUnavailable"), Fault(kind="drop")],
    ids=["500", "503", "dropped-connection"],
)
def test_retries_transient_failures(client, settings, dashscope, fault):
    dashscope.inject(fault)
    out = client.embed_batch(["some text"], settings.embedder, settings.dimensions)
    assert len(out.vectors) == 1
    assert len(dashscope.calls("/embeddings")) == 2


def test_timeout_is_retried_then_succeeds(make_settings, dashscope):
    s = make_settings(dashscope_timeout_seconds=0.5)
    c = DashScopeClient(s, ApiKeyProvider.from_settings(s))
    dashscope.inject(Fault(kind="slow", delay=2.5))
    t0 = time.monotonic()
    assert c.embed_batch(["x y"], s.embedder, s.dimensions).vectors
    assert time.monotonic() - t0 < 2.0  # gave up after 0.5 s, backed off, retried: did not wait 2.5 s
    time.sleep(max(0.0, 2.8 - (time.monotonic() - t0)))  # let the abandoned request finish, then count both
    assert len(dashscope.calls("/embeddings")) == 2


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault(status=400, code="InvalidParameter", message="bad"), BadRequestError),
        (
            Fault(status=401, code="invalid_api_key", message="Incorrect API key provided."),
            InvalidApiKeyError,
        ),
        (
            Fault(
                status=400,
                code="data_inspection_failed",
                message="Input data may contain inappropriate content.",
            ),
            ContentModerationError,
        ),
        (
            Fault(
                status=400,
                code="invalid_parameter_error",
                message="Range of input length should be [1, 30720]",
            ),
            ContextLengthExceededError,
        ),
        (Fault(status=404, code="model_not_found", message="The model does not exist"), ModelNotFoundError),
    ],
    ids=["400", "401", "moderation", "context-length", "model-not-found"],
)
def test_no_retry_on_client_errors_and_clear_classes(client, settings, dashscope, fault, error):
    dashscope.inject(fault)
    with pytest.raises(error) as info:
        client.complete(HELLO, settings.generator, ChatParams())
    assert len(dashscope.calls("/chat/completions")) == 1
    assert not info.value.retryable


def test_throttled_after_retries(make_settings, dashscope):
    s = make_settings(dashscope_max_retries=2)
    c = DashScopeClient(s, ApiKeyProvider.from_settings(s))
    dashscope.inject(Fault(status=429, code="Throttling.RateQuota", retry_after=0.01), times=5)
    with pytest.raises(ThrottledError) as info:
        c.complete(HELLO, s.generator, ChatParams())
    assert info.value.retryable
    assert len(dashscope.calls("/chat/completions")) == 3


def test_wrong_key_explains_regions(make_settings, dashscope):
    s = make_settings(dashscope_api_key="sk-wrong-region-key-000", dashscope_region="cn")
    c = DashScopeClient(s, ApiKeyProvider.from_settings(s))
    with pytest.raises(InvalidApiKeyError) as info:
        c.complete(HELLO, s.generator, ChatParams())
    msg = str(info.value)
    assert "cn-beijing" in msg and "ap-southeast-1" in msg and "DASHSCOPE_API_KEY" in msg
    assert "sk-wrong-region-key-000" not in msg


def test_rotated_secret_is_picked_up_after_401(aws, make_settings, dashscope):
    sm = boto3.client("secretsmanager", region_name="us-east-1")
    arn = sm.create_secret(Name="rotating-key", SecretString=json.dumps({"api_key": "sk-old-rotated-key"}))["ARN"]
    s = make_settings(dashscope_api_key=None, dashscope_secret_arn=arn)
    keys = ApiKeyProvider.from_settings(s, provider=SecretsProvider(boto3_client=sm))
    c = DashScopeClient(s, keys)
    dashscope.api_keys = {"sk-old-rotated-key"}
    assert c.complete(HELLO, s.generator, ChatParams()).text
    # rotation: the secret and the service move to a new key; the client still caches the old one
    sm.put_secret_value(SecretId=arn, SecretString=json.dumps({"api_key": "sk-new-rotated-key"}))
    dashscope.api_keys = {"sk-new-rotated-key"}
    assert c.complete(HELLO, s.generator, ChatParams()).text
    statuses = [x.status for x in dashscope.calls("/chat/completions")]
    assert statuses == [200, 401, 200]


def test_workspace_header_is_sent(make_settings, dashscope):
    s = make_settings(dashscope_workspace_id="ws-1234")
    c = DashScopeClient(s, ApiKeyProvider.from_settings(s))
    c.embed_batch(["hello"], s.embedder, s.dimensions)
    c.complete(HELLO, s.generator, ChatParams())
    assert {x.workspace for x in dashscope.calls()} == {"ws-1234"}


def test_stream_yields_deltas_before_the_stream_ends_and_reports_usage(client, settings, dashscope):
    dashscope.chunk_delay = 0.05

    async def run():
        arrivals, events = [], []
        async for ev in client.stream(HELLO, settings.generator, ChatParams()):
            arrivals.append(time.monotonic())
            events.append(ev)
        return arrivals, events

    arrivals, events = asyncio.run(run())
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) > 5
    last_write = dashscope.state.stream_times[-1]
    assert arrivals[0] < last_write - 0.2  # the first token was in hand long before the server finished
    end = events[-1]
    assert isinstance(end, StreamEnd)
    usage = dashscope.state.last_usage
    assert (end.usage.prompt_tokens, end.usage.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert end.usage.cost_usd > 0
    assert "".join(d.text for d in deltas).startswith("(stand-in model)")


def test_reasoning_is_kept_apart(client, dashscope):
    from rag_shared.config import load_catalog

    model = load_catalog().generators["qwen3-32b"]  # hybrid thinking, asked for while streaming

    async def run():
        return [ev async for ev in client.stream(HELLO, model, ChatParams(enable_thinking=True))]

    events = asyncio.run(run())
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    answer = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert reasoning.startswith("Let me check")
    assert "Let me check" not in answer and answer


def test_thinking_only_requested_when_streaming(client, dashscope):
    from rag_shared.config import load_catalog

    model = load_catalog().generators["qwen3-32b"]
    out = client.complete(HELLO, model, ChatParams(enable_thinking=True))  # would be a 400 if sent
    assert out.text and not out.reasoning


def test_stream_dropped_midway_is_an_error_after_partial_output(client, settings, dashscope):
    dashscope.inject(Fault(kind="drop_stream", after_chunks=4, path="/chat/completions"))

    async def run():
        got = []
        with pytest.raises(ServiceUnavailableError):
            async for ev in client.stream(HELLO, settings.generator, ChatParams()):
                got.append(ev)
        return got

    got = asyncio.run(run())
    assert 1 <= len(got) <= 4
    assert all(isinstance(e, TextDelta) for e in got)
