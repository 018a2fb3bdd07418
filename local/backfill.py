"""``make backfill``: run the indexer's backfill against the deployed stack, configured as the
deployed indexer is (its function's environment), so nobody copies six variables by hand.

    python -m local.backfill [--stack qwen-rag] [--prefix docs/] [--prune] [--dry-run] [--local]

By default it plans: one message per changed object goes to the stack's indexing queue
(``IndexQueueUrl``), and the deployed indexers do the work under their concurrency and retries.
``--local`` indexes in this process instead.

The stack name defaults to samconfig.toml's; credentials and region come from the usual AWS chain.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class BackfillSetupError(RuntimeError):
    """The deployed stack cannot be read; the message says what to set."""


def default_stack_name(samconfig: Path = ROOT / "samconfig.toml") -> str:
    try:
        config = tomllib.loads(samconfig.read_text(encoding="utf-8"))
        return str(config["default"]["global"]["parameters"]["stack_name"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "qwen-rag"


def indexer_environment(variables: dict[str, str]) -> dict[str, str]:
    """The deployed indexer's settings, minus what belongs to the Lambda runtime (``AWS_*``)."""
    return {k: v for k, v in variables.items() if not k.startswith("AWS_")}


def read_stack(stack: str, cfn: Any, lam: Any) -> tuple[str, dict[str, str]]:
    """(bucket name, indexer environment) of a deployed stack; the environment also names the stack's
    indexing queue (``INDEX_QUEUE_URL``), where the backfill sends its plan."""
    outputs = {
        o["OutputKey"]: o["OutputValue"] for o in cfn.describe_stacks(StackName=stack)["Stacks"][0].get("Outputs", [])
    }
    bucket = outputs.get("DocumentsBucketName")
    if not bucket:
        raise BackfillSetupError(f"stack {stack} has no DocumentsBucketName output: is it this project's stack?")
    function = cfn.describe_stack_resource(StackName=stack, LogicalResourceId="IndexerFunction")
    name = function["StackResourceDetail"]["PhysicalResourceId"]
    config = lam.get_function_configuration(FunctionName=name)
    env = indexer_environment(config.get("Environment", {}).get("Variables", {}))
    if outputs.get("IndexQueueUrl"):
        env["INDEX_QUEUE_URL"] = outputs["IndexQueueUrl"]
    return bucket, env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.backfill", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--stack", default=default_stack_name(), help="CloudFormation stack name")
    parser.add_argument("--prefix", default="", help="only keys under this prefix")
    parser.add_argument("--prune", action="store_true", help="remove indexed keys no longer in the bucket")
    parser.add_argument("--dry-run", action="store_true", help="report what would change, change nothing")
    parser.add_argument("--local", action="store_true", help="index in this process instead of via the queue")
    args = parser.parse_args(argv)

    import boto3
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

    try:
        session = boto3.Session()
        bucket, env = read_stack(args.stack, session.client("cloudformation"), session.client("lambda"))
    except NoCredentialsError:
        print("error: no AWS credentials: run `aws configure` or `aws sso login`, or set AWS_PROFILE", file=sys.stderr)
        return 2
    except NoRegionError:
        print("error: no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION) to the stack's region", file=sys.stderr)
        return 2
    except ClientError as exc:
        region = session.region_name
        print(f"error: cannot read stack {args.stack} in {region}: {exc} (set --stack or AWS_REGION)", file=sys.stderr)
        return 2
    except (BotoCoreError, BackfillSetupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.environ.update(env)
    from indexer import backfill

    flags = [f for f, on in (("--prune", args.prune), ("--dry-run", args.dry_run), ("--local", args.local)) if on]
    print(f"Backfill of s3://{bucket}/{args.prefix} with stack {args.stack}'s indexer settings", flush=True)
    return backfill.main([f"s3://{bucket}/{args.prefix}", *flags])


if __name__ == "__main__":
    sys.exit(main())
