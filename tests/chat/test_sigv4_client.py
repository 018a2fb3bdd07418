"""The openai SDK through a SigV4-checking function URL (AuthType AWS_IAM) to the chat app, using the
signing client in examples/openai_sigv4.py that the README shows."""

from __future__ import annotations

import time
from collections.abc import Iterator

import boto3
import httpx
import openai
import pytest
from chat.app import create_app
from chat.settings import ChatSettings

from examples.openai_sigv4 import FunctionUrlAuth, client, region_of
from local.servers import AppServer
from standins.function_url import FunctionUrl

KEY_ID, SECRET, SESSION_TOKEN = "AKIAEXAMPLECALLER01", "caller-secret-key-abcdefghijklmnop", "session-token-xyz"


def session(secret: str = SECRET) -> boto3.Session:
    return boto3.Session(
        aws_access_key_id=KEY_ID, aws_secret_access_key=secret, aws_session_token=SESSION_TOKEN, region_name="eu-west-1"
    )


@pytest.fixture
def function_url(deps, indexed) -> Iterator[FunctionUrl]:
    with AppServer(create_app(deps, ChatSettings(chat_auth_mode="iam"))) as app:
        url = FunctionUrl(app.url, {KEY_ID: SECRET}, region="us-east-1").start()
        yield url
        url.stop()


def test_signed_openai_stream_passes_the_iam_check_and_streams(function_url, dashscope):
    dashscope.chunk_delay = 0.03
    stream = client(function_url.url, region="us-east-1", session=session()).chat.completions.create(
        model="qwen-plus",
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "How much are meals reimbursed per day?"}],
        extra_body={"top_k": 2},
    )
    arrivals, text, sources, usage = [], "", None, None
    for chunk in stream:
        arrivals.append(time.perf_counter())
        sources = sources or getattr(chunk, "sources", None)
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
    assert function_url.refused == [] and function_url.forwarded == 1
    assert "60 USD" in text and sources is not None and len(sources) == 2
    assert usage is not None and usage.completion_tokens > 0
    assert arrivals[-1] - arrivals[0] > 0.2  # relayed as produced, not one buffered body


def test_non_streaming_and_get_requests_are_signed_too(function_url):
    c = client(function_url.url, region="us-east-1", session=session())
    assert any(m.id == "qwen-plus" for m in c.models.list())
    reply = c.chat.completions.create(model="qwen-plus", messages=[{"role": "user", "content": "Meals per day?"}])
    assert reply.choices[0].message.content and function_url.forwarded == 2


def test_wrong_secret_or_no_signature_is_refused_before_the_app(function_url, dashscope):
    calls_before = len(dashscope.calls())  # the indexing of the samples
    with pytest.raises(openai.PermissionDeniedError):
        client(function_url.url, region="us-east-1", session=session("not-the-secret")).models.list()
    unsigned = openai.OpenAI(base_url=function_url.url + "/v1", api_key="sk-anything", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        unsigned.chat.completions.create(model="qwen-plus", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.PermissionDeniedError):  # signed for another region
        client(function_url.url, region="eu-west-1", session=session()).models.list()
    assert function_url.forwarded == 0 and len(dashscope.calls()) == calls_before
    assert [r.split()[0] for r in function_url.refused] == ["The", "Missing", "Credential"]


def test_region_comes_from_a_function_url():
    assert region_of("https://abc123xyz.lambda-url.ap-southeast-1.on.aws/") == "ap-southeast-1"
    assert region_of("https://abc123xyz.lambda-url.us-east-1.on.aws") == "us-east-1"
    assert region_of("http://127.0.0.1:8080") is None
    assert region_of("https://example.com/lambda-url") is None


def test_a_body_changed_after_signing_is_refused(function_url):
    body = b'{"model": "qwen-plus", "messages": [{"role": "user", "content": "Meals per day?"}]}'
    signed = FunctionUrlAuth("us-east-1", session())(
        httpx.Request("POST", function_url.url + "/v1/chat/completions", content=body)
    )
    headers = {k: v for k, v in signed.headers.items() if k.lower() != "content-length"}
    with httpx.Client(timeout=30) as http:
        assert http.post(signed.url, headers=headers, content=body).status_code == 200
        tampered = http.post(signed.url, headers=headers, content=body.replace(b"Meals", b"Taxis"))
    assert tampered.status_code == 403 and "signature" in tampered.json()["Message"]
    assert function_url.forwarded == 1
