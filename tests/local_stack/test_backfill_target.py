"""``make backfill``: the deployed indexer's settings, read from the stack, not copied by hand; and
without credentials one line saying what to do, not a traceback."""

from __future__ import annotations

import io
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

import pytest

from local import backfill


class FakeCfn:
    def describe_stacks(self, StackName: str) -> dict[str, Any]:
        assert StackName == "my-rag"
        outputs = [
            {"OutputKey": "DocumentsBucketName", "OutputValue": "my-docs-bucket"},
            {"OutputKey": "IndexQueueUrl", "OutputValue": "https://sqs.us-east-1.amazonaws.com/1/my-rag-IndexQueue"},
        ]
        return {"Stacks": [{"Outputs": outputs}]}

    def describe_stack_resource(self, StackName: str, LogicalResourceId: str) -> dict[str, Any]:
        assert LogicalResourceId == "IndexerFunction"
        return {"StackResourceDetail": {"PhysicalResourceId": "my-rag-IndexerFunction-abc"}}


class FakeLambda:
    def get_function_configuration(self, FunctionName: str) -> dict[str, Any]:
        assert FunctionName == "my-rag-IndexerFunction-abc"
        variables = {
            "OPENSEARCH_URL": "https://abc.us-east-1.aoss.amazonaws.com",
            "OPENSEARCH_SERVICE": "aoss",
            "DASHSCOPE_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:1:secret:k",
            "AWS_LAMBDA_EXEC_WRAPPER": "/opt/bootstrap",
        }
        return {"Environment": {"Variables": variables}}


def test_the_bucket_and_the_indexer_settings_come_from_the_stack() -> None:
    bucket, env = backfill.read_stack("my-rag", FakeCfn(), FakeLambda())
    assert bucket == "my-docs-bucket"
    assert env["OPENSEARCH_SERVICE"] == "aoss" and env["DASHSCOPE_SECRET_ARN"].endswith(":k")
    assert not any(k.startswith("AWS_") for k in env)  # the runtime's, not the backfill's
    assert env["INDEX_QUEUE_URL"].endswith("/my-rag-IndexQueue")  # the plan goes to the deployed fleet


def test_the_stack_name_is_samconfigs(tmp_path: Path) -> None:
    assert backfill.default_stack_name() == "qwen-rag"
    (tmp_path / "samconfig.toml").write_text('[default.global.parameters]\nstack_name = "other"\n')
    assert backfill.default_stack_name(tmp_path / "samconfig.toml") == "other"
    assert backfill.default_stack_name(tmp_path / "missing.toml") == "qwen-rag"


def test_without_credentials_it_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    err = io.StringIO()
    with redirect_stderr(err):
        code = backfill.main(["--stack", "my-rag"])
    assert code == 2
    assert err.getvalue().strip() == (
        "error: no AWS credentials: run `aws configure` or `aws sso login`, or set AWS_PROFILE"
    )
