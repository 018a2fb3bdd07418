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

from standins.base import StandInServer
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


# --- the chat stream over httpx (issue 14): same behaviour as the SDK it replaced -----------------


def test_stream_retries_before_the_first_byte_honouring_retry_after(client, settings, dashscope):
    dashscope.inject(Fault(status=429, code="Throttling.RateQuota", retry_after=0.3, path="/chat/completions"), 2)

    async def run():
        return [e async for e in client.stream(HELLO, settings.generator, ChatParams())]

    t0 = time.monotonic()
    events = asyncio.run(run())
    assert time.monotonic() - t0 >= 0.6  # waited Retry-After twice
    assert [c.status for c in dashscope.calls("/chat/completions")] == [429, 429, 200]
    assert isinstance(events[-1], StreamEnd) and any(isinstance(e, TextDelta) for e in events)


def test_stream_gives_up_after_max_retries_with_the_right_class(make_settings, dashscope):
    s = make_settings(dashscope_max_retries=1)
    c = DashScopeClient(s, ApiKeyProvider.from_settings(s))
    dashscope.inject(Fault(status=429, code="Throttling.RateQuota", retry_after=0.01), times=3)

    async def run():
        return [e async for e in c.stream(HELLO, s.generator, ChatParams())]

    with pytest.raises(ThrottledError):
        asyncio.run(run())
    assert len(dashscope.calls("/chat/completions")) == 2
    dashscope.inject(Fault(status=400, code="data_inspection_failed", message="Input data may contain inappropriate"))
    with pytest.raises(ContentModerationError):
        asyncio.run(run())


@pytest.mark.parametrize(
    ("headers", "low", "high"),
    [
        ({"retry-after": "2"}, 2.0, 2.0),
        ({"retry-after-ms": "150"}, 0.15, 0.15),
        ({"retry-after": "Wed, 25 Nov 2026 00:00:03 GMT"}, 3.0, 3.0),
        ({"retry-after": "3600"}, 0.375, 0.5),  # beyond 60 s: ignored, backoff instead
        ({}, 0.375, 0.5),
    ],
)
def test_retry_delay_follows_the_sdk(headers, low, high):
    from rag_shared.dashscope import retry_delay

    now = 1795564800.0  # 2026-11-25 00:00:00 UTC
    assert low <= retry_delay(0, headers, now=now) <= high
    assert retry_delay(10, {}) <= 8.0


class InStreamError(StandInServer):
    """Streams two pieces, then DashScope's error object inside the stream (as its compatible mode
    does when moderation or throttling strikes after the first token)."""

    def __init__(self, code: str, message: str, raw: bytes | None = None) -> None:
        super().__init__()
        self.code, self.message, self.raw = code, message, raw

    def handle(self, req):
        req.start_chunked(200, "text/event-stream;charset=UTF-8")
        piece = {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]}
        req.write_chunk(f"data: {json.dumps(piece)}\n\n".encode())
        if self.raw is not None:
            req.write_chunk(self.raw)
        else:
            err = {"error": {"code": self.code, "message": self.message, "type": self.code}, "request_id": "r-1"}
            req.write_chunk(f"data: {json.dumps(err)}\n\n".encode())
        req.end_chunked()


@pytest.mark.parametrize(
    ("code", "error", "retryable"),
    [
        ("data_inspection_failed", ContentModerationError, False),
        ("Throttling.RateQuota", ThrottledError, True),
        ("InternalError", ServiceUnavailableError, True),
        ("InvalidParameter", BadRequestError, False),
    ],
)
def test_an_error_inside_the_stream_keeps_its_class(make_settings, code, error, retryable):
    server = InStreamError(code, "went wrong").start()
    try:
        s = make_settings(dashscope_base_url=server.url, dashscope_max_retries=0)
        c = DashScopeClient(s, ApiKeyProvider.from_settings(s))

        async def run():
            got = []
            with pytest.raises(error) as info:
                async for ev in c.stream(HELLO, s.generator, ChatParams()):
                    got.append(ev)
            return got, info.value

        got, exc = asyncio.run(run())
    finally:
        server.stop()
    assert got == [TextDelta("Hello")]
    assert exc.retryable is retryable and "went wrong" in str(exc)


def test_a_malformed_chunk_is_a_dashscope_error(make_settings):
    from rag_shared.errors import DashScopeError

    server = InStreamError("", "", raw=b"data: {not json\n\n").start()
    try:
        s = make_settings(dashscope_base_url=server.url, dashscope_max_retries=0)
        c = DashScopeClient(s, ApiKeyProvider.from_settings(s))

        async def run():
            return [e async for e in c.stream(HELLO, s.generator, ChatParams())]

        with pytest.raises(DashScopeError, match="not valid JSON"):
            asyncio.run(run())
    finally:
        server.stop()


def test_tool_call_pieces_are_streamed_in_wire_shape(client, settings, dashscope):
    from rag_shared.dashscope import ToolCallDelta

    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}

    async def run():
        return [e async for e in client.stream(HELLO, settings.generator, ChatParams(tools=[tool]))]

    events = asyncio.run(run())
    pieces = [c for e in events if isinstance(e, ToolCallDelta) for c in e.calls]
    assert pieces[0]["function"]["name"] == "lookup" and pieces[0]["id"].startswith("call_")
    assert isinstance(events[-1], StreamEnd) and events[-1].finish_reason == "tool_calls"
