"""Secrets never reach a log, in any spelling, on the indexer's paths with every wire log on.

The key lives in Secrets Manager in its documented JSON form; botocore prints GetSecretValue's
body at DEBUG (as a bytes repr, with the JSON escaped inside), openai/httpx print the request
headers. Each path runs at DEBUG with WIRE_DEBUG_LOGS=true, and the whole output is scanned for
the key as is, JSON-escaped, in a bytes repr, URL-encoded, and for any 12-character piece of it.
"""

from __future__ import annotations

import json
import logging
import urllib.parse

import boto3
import pytest
from rag_shared import logs
from rag_shared.errors import SecretUnavailableError
from rag_shared.secrets import ApiKeyProvider

from standins.dashscope import Fault
from tests.indexer.conftest import Uploader

# '/', '+' and '=' make the URL-encoded spelling differ from the raw one
KEY = "sk-LogScan/Key+Secret=0123456789abcdef"


def spellings(value: str) -> set[str]:
    escaped = json.dumps(value)[1:-1]
    forms = {
        value,
        escaped,
        repr(value.encode())[2:-1],
        repr(escaped.encode())[2:-1],
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote_plus(value),
    }
    pieces = {value[i : i + 12] for i in range(len(value) - 11)}
    return forms | pieces


def assert_clean(text: str) -> None:
    leaks = sorted(s for s in spellings(KEY) if s in text)
    assert not leaks, f"secret in logs as {leaks}"


@pytest.fixture
def wire_debug(monkeypatch, caplog):
    """DEBUG everywhere with the wire loggers on, as WIRE_DEBUG_LOGS=true asks."""
    monkeypatch.setenv("WIRE_DEBUG_LOGS", "true")
    saved = {name: logging.getLogger(name).level for name in logs.WIRE_LOGGERS}
    logs.install()
    for name in logs.WIRE_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    yield caplog
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def secret_arn(aws) -> str:
    sm = boto3.client("secretsmanager", region_name="us-east-1")
    name = f"dashscope-log-scan-{id(object())}"
    return sm.create_secret(Name=name, SecretString=json.dumps({"api_key": KEY}))["ARN"]


@pytest.fixture
def key_accepted(dashscope):
    dashscope.api_keys.add(KEY)
    yield
    dashscope.api_keys.discard(KEY)


def test_secrets_lookup_and_its_failures_log_no_secret(wire_debug, secret_arn, capsys):
    provider = ApiKeyProvider(env_key=None, secret_id=secret_arn)
    assert provider.get().get_secret_value() == KEY
    provider.invalidate()
    assert provider.get().get_secret_value() == KEY
    with pytest.raises(SecretUnavailableError):
        ApiKeyProvider(env_key=None, secret_id=secret_arn + "-missing").get()
    out = capsys.readouterr()
    text = wire_debug.text + out.out + out.err
    assert "GetSecretValue" in text or "get_secret_value" in text.lower()  # the wire logs did run
    assert "Response body" in text
    assert_clean(text)


def test_indexer_paths_log_no_secret(
    wire_debug, indexer_env, monkeypatch, secret_arn, key_accepted, dashscope, uploader: Uploader, capsys
):
    from indexer import handler

    monkeypatch.delenv("DASHSCOPE_API_KEY")
    monkeypatch.setenv("DASHSCOPE_SECRET_ARN", secret_arn)
    handler.reset()
    # indexed, then DashScope rejects the key once (re-read from the secret), then an unindexable file
    ok = uploader.run(uploader.put("docs/a.md", "# Title\n\nSome text about the log scan.\n"))
    assert ok["batchItemFailures"] == []
    dashscope.inject(Fault(status=401, code="InvalidApiKey", message="Invalid API-key provided."), times=1)
    uploader.run(uploader.put("docs/b.md", "# Other\n\nMore text, rejected once.\n"))
    assert dashscope.calls(status=401), "the injected 401 did not fire"
    uploader.run(uploader.put("docs/c.bin", b"\x00\x01binary"))
    dashscope.inject(Fault(status=500), times=20)
    # the whole batch failed: the error path, logged (reported as item failures, not raised)
    result = uploader.run(uploader.put("docs/d.md", "# Failing\n\nDashScope keeps failing here.\n"))
    assert len(result["batchItemFailures"]) == 1
    out = capsys.readouterr()
    text = wire_debug.text + out.out + out.err
    assert "Response body" in text and "Authorization" in text  # the wire logs did run
    assert_clean(text)


@pytest.mark.parametrize(
    "line",
    [
        # botocore's GetSecretValue body as it logs it: a bytes repr of JSON holding escaped JSON
        "Response body:\n"
        + repr(json.dumps({"ARN": "arn:aws:secretsmanager:x", "SecretString": json.dumps({"api_key": KEY})}).encode()),
        json.dumps({"SecretString": json.dumps({"api_key": KEY})}),
        json.dumps({"api_key": KEY}),
        json.dumps({"message": json.dumps({"api_key": KEY})}),
        "POST /x?" + urllib.parse.urlencode({"api_key": KEY}),
        "body=" + urllib.parse.quote(json.dumps({"api_key": KEY})),
        "headers: {'Authorization': 'Bearer " + KEY + "'}",
        "Authorization: Bearer " + urllib.parse.quote(KEY, safe=""),
        "DASHSCOPE_API_KEY=" + KEY,
    ],
)
def test_shapes_are_masked_before_the_key_is_known(line, monkeypatch):
    """Pattern redaction, for logs printed before the key is registered (the lookup itself)."""
    monkeypatch.setattr(logs, "_secrets", set())
    assert_clean(logs.redact(line))


def test_registered_key_is_masked_in_every_spelling(monkeypatch):
    monkeypatch.setattr(logs, "_secrets", set())
    logs.register_secret(KEY)
    for form in spellings(KEY) - {KEY[i : i + 12] for i in range(len(KEY) - 11)}:
        assert_clean(logs.redact(f"free text around {form} here"))
