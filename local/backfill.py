"""``make backfill``: run the indexer's backfill against the deployed stack, configured as the
deployed indexer is (its function's environment), so nobody copies six variables by hand.

    python -m local.backfill [--stack qwen-rag] [--prefix docs/] [--prune] [--dry-run] [--local [--workers N]]
                             [--no-wait] [--attach [RUN_ID]] [--verify-chunks]
    python -m local.backfill --demo 300 [--workers 4]     # end to end on the local stack, no AWS account

By default it plans: one message per changed object goes to the stack's indexing queue
(``IndexQueueUrl``), and the deployed indexers do the work under their concurrency and retries,
while a progress bar follows what they commit. ``--local`` indexes in this process instead.
``--demo N`` starts the local stack (moto + stand-ins), puts N generated files in its bucket as if
they predated the trigger, plans them onto the local queue and has ``--workers`` pumped indexers
(as Lambda's SQS mapping feeds the fleet) work it off under the progress bar.

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
    parser.add_argument("--workers", type=int, default=None, help="--local or --demo: files indexed at once")
    parser.add_argument("--no-wait", action="store_true", help="plan, print the run id and exit")
    parser.add_argument("--attach", nargs="?", const="latest", metavar="RUN_ID", help="follow a planned run")
    parser.add_argument("--verify-chunks", action="store_true", help="re-enqueue committed keys whose chunks are gone")
    parser.add_argument("--demo", type=int, metavar="N", help="end to end on the local stack with N generated files")
    args = parser.parse_args(argv)
    if args.demo:
        return demo(args.demo, workers=args.workers or 4)

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

    print(f"Backfill of s3://{bucket}/{args.prefix} with stack {args.stack}'s indexer settings", flush=True)
    return backfill.main(passed_on(args, f"s3://{bucket}/{args.prefix}"))


def passed_on(args: argparse.Namespace, url: str) -> list[str]:
    """The indexer backfill's arguments for these options."""
    if args.attach:
        return ["--attach", args.attach]
    switches = ("prune", "dry_run", "local", "no_wait", "verify_chunks")
    flags = ["--" + name.replace("_", "-") for name in switches if getattr(args, name)]
    if args.workers:
        flags += ["--workers", str(args.workers)]
    return [url, *flags]


def demo(files: int, *, workers: int = 4, interval: float = 0.5, say: Any = print) -> int:
    """Planner → local queue → ``workers`` pumped indexers, with the progress bar, on the local stack."""
    import threading

    import boto3

    from local.sqs_pump import pump
    from local.stack import LocalStack

    with LocalStack(say=lambda *_: None) as stack:
        from indexer import backfill

        s3: Any = boto3.client("s3")
        say(f"Putting {files} generated files in s3://{stack.bucket}/backfill-demo/ …", flush=True)
        # the files predate the bucket's trigger: put them with the notification off, then restore it
        wiring = s3.get_bucket_notification_configuration(Bucket=stack.bucket)
        wiring.pop("ResponseMetadata", None)
        s3.put_bucket_notification_configuration(Bucket=stack.bucket, NotificationConfiguration={})
        for i in range(files):
            body = f"Backfill demo file {i}: generated text about topic {i % 17} for the local stack."
            s3.put_object(Bucket=stack.bucket, Key=f"backfill-demo/{i:05d}.txt", Body=body.encode())
        s3.put_bucket_notification_configuration(Bucket=stack.bucket, NotificationConfiguration=wiring)
        stop = threading.Event()

        def worker() -> None:  # one indexer of the fleet
            client = boto3.client("sqs")
            while not stop.is_set():
                if not pump(client, stack.queue_url, max_rounds=1, wait_seconds=0):
                    stop.wait(0.1)

        fleet = [threading.Thread(target=worker, name=f"indexer-{n}") for n in range(max(1, workers))]
        for t in fleet:
            t.start()
        try:
            url = f"s3://{stack.bucket}/backfill-demo/"
            return backfill.main([url, "--queue-url", stack.queue_url, "--interval", str(interval)])
        finally:
            stop.set()
            for t in fleet:
                t.join()


if __name__ == "__main__":
    sys.exit(main())
