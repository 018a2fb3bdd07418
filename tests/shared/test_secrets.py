import json
import logging
import time
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.parameters import SecretsProvider
from pydantic import SecretStr
from rag_shared.errors import MissingApiKeyError, SecretUnavailableError
from rag_shared.secrets import ApiKeyProvider, CachedSecret, parse_secret_value


def _secret(name: str, value: str) -> str:
    sm = boto3.client("secretsmanager", region_name="us-east-1")
    return sm.create_secret(Name=name, SecretString=value)["ARN"]


def test_env_key_wins_and_is_secret():
    p = ApiKeyProvider(env_key=SecretStr("sk-env-key-abcdef"), secret_id="arn:ignored")
    key = p.get()
    assert key.get_secret_value() == "sk-env-key-abcdef"
    assert "sk-env-key-abcdef" not in repr(key) and "sk-env-key-abcdef" not in repr(p.__dict__)


def test_missing_key_names_both_ways():
    with pytest.raises(MissingApiKeyError) as info:
        ApiKeyProvider(env_key=None, secret_id=None).get()
    assert "DASHSCOPE_API_KEY" in str(info.value)
    assert "DASHSCOPE_SECRET_ARN" in str(info.value)


@pytest.mark.parametrize(
    "stored",
    ["sk-plain-string-key", json.dumps({"api_key": "sk-plain-string-key"}), "  sk-plain-string-key\n"],
)
def test_secret_formats(stored):
    assert parse_secret_value(stored, secret_id="s") == "sk-plain-string-key"


@pytest.mark.parametrize("stored", ["", "{}", '{"api_key": ""}', "{not json"])
def test_bad_secret_values_are_clear_errors(stored):
    with pytest.raises(MissingApiKeyError) as info:
        parse_secret_value(stored, secret_id="my-secret")
    assert "my-secret" in str(info.value)


class CountingClient:
    """Wraps a real boto3 client and counts GetSecretValue calls."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0

    def get_secret_value(self, **kw):
        self.calls += 1
        return self.inner.get_secret_value(**kw)


def test_key_from_secrets_manager_is_cached_then_refreshed_after_rotation(aws):
    arn = _secret("dashscope-cache-test", json.dumps({"api_key": "sk-first-key-000"}))
    sm = boto3.client("secretsmanager", region_name="us-east-1")
    counting: Any = CountingClient(sm)
    p = ApiKeyProvider(
        env_key=None, secret_id=arn, max_age_seconds=300, provider=SecretsProvider(boto3_client=counting)
    )
    assert p.get().get_secret_value() == "sk-first-key-000"
    for _ in range(5):
        p.get()
    assert counting.calls == 1  # a warm function does not call Secrets Manager per request

    sm.put_secret_value(SecretId=arn, SecretString=json.dumps({"api_key": "sk-second-key-111"}))
    assert p.get().get_secret_value() == "sk-first-key-000"  # still cached
    p.invalidate()  # what the client does after a 401
    assert p.get().get_secret_value() == "sk-second-key-111"
    assert counting.calls == 2


def test_cache_expires_after_max_age(aws):
    arn = _secret("dashscope-maxage-test", "sk-short-lived-1")
    counting: Any = CountingClient(boto3.client("secretsmanager", region_name="us-east-1"))
    p = ApiKeyProvider(env_key=None, secret_id=arn, max_age_seconds=0, provider=SecretsProvider(boto3_client=counting))
    p.get()
    p.get()
    assert counting.calls == 2


class FlakyClient(CountingClient):
    def __init__(self, inner, failures):
        super().__init__(inner)
        self.failures = failures

    def get_secret_value(self, **kw):
        if self.failures:
            self.failures -= 1
            self.calls += 1
            from botocore.exceptions import EndpointConnectionError

            raise EndpointConnectionError(endpoint_url="https://secretsmanager")
        return super().get_secret_value(**kw)


def test_secrets_manager_outage_is_retryable_then_recovers(aws, caplog):
    arn = _secret("dashscope-outage-test", "sk-outage-key-999")
    flaky = FlakyClient(boto3.client("secretsmanager", region_name="us-east-1"), failures=1)
    p = ApiKeyProvider(
        env_key=None,
        secret_id=arn,
        provider=SecretsProvider(boto3_client=flaky),  # type: ignore[arg-type]
        failure_backoff_seconds=0.3,
    )
    with pytest.raises(SecretUnavailableError) as info:
        p.get()
    assert info.value.retryable
    assert arn not in str(info.value) and "DASHSCOPE_SECRET_ARN" in str(info.value)  # the ARN names the account
    for _ in range(20):  # a burst during the outage costs no further Secrets Manager call
        with pytest.raises(SecretUnavailableError):
            p.get()
    assert flaky.calls == 1
    time.sleep(0.35)
    assert p.get().get_secret_value() == "sk-outage-key-999"
    assert flaky.calls == 2


def test_one_reader_serves_both_secrets(aws):
    """The chat token and the DashScope key are read by the same cached reader."""
    arn = _secret("chat-token-test", json.dumps({"token": "chat-token-abcdef123"}))
    counting: Any = CountingClient(boto3.client("secretsmanager", region_name="us-east-1"))
    token = CachedSecret(arn, label="CHAT_TOKEN_SECRET_ARN", provider=SecretsProvider(boto3_client=counting))
    assert [token.get() for _ in range(10)] == ["chat-token-abcdef123"] * 10
    assert counting.calls == 1


def test_loaded_key_is_redacted_from_every_log(aws, caplog):
    caplog.set_level(logging.DEBUG)
    arn = _secret("dashscope-redact-test", "sk-redact-me-424242")
    p = ApiKeyProvider(env_key=None, secret_id=arn)
    key = p.get().get_secret_value()
    logging.getLogger("some.library").info("sending Authorization: Bearer %s", key)
    try:
        raise RuntimeError(f"boom with {key}")
    except RuntimeError:
        logging.getLogger("other").exception("failed")
    assert "sk-redact-me-424242" not in caplog.text
    assert "Bearer ***" in caplog.text
