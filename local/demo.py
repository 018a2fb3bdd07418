"""``make demo`` / ``make serve``: start the local stack, index a folder of documents through S3
events, ask a question and print the streamed answer with its sources; with ``--serve``, keep
serving and keep indexing the folder (and anything copied to the local bucket) as it changes.

    python -m local.demo ["your question"] [--docs DIR]     # one question, then exit
    python -m local.demo --serve [--docs DIR] [--port N]    # keep running for curl, the SDK, the browser
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

import httpx
from httpx_sse import EventSource

from local.stack import ROOT, LocalStack, StackError

QUESTION = "How much are meals reimbursed per day when travelling?"


def ask(stack: LocalStack, question: str, out: TextIO | None = None) -> dict[str, object]:
    """Stream one answer to ``out`` (default: the current stdout) as it arrives; returns sources and usage."""
    out = out or sys.stdout
    headers = {"Authorization": f"Bearer {stack.token}"}
    body = {"messages": [{"role": "user", "content": question}]}
    result: dict[str, object] = {"answer": ""}
    t0 = time.monotonic()
    first_token = None
    with (
        httpx.Client(timeout=120) as client,
        client.stream("POST", f"{stack.chat_url}/chat/completions/stream", json=body, headers=headers) as r,
    ):
        if r.status_code != 200:
            try:
                message = r.read() and r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = r.text
            raise StackError(f"the chat request failed with HTTP {r.status_code}: {message}")
        # httpx-sse splits lines only where SSE does (CR, LF); iter_lines would also split inside
        # an answer at U+2028/U+2029, like str.splitlines
        for sse in EventSource(r).iter_sse():
            event, data = sse.event, json.loads(sse.data)
            if event == "delta":
                first_token = first_token or time.monotonic() - t0
                print(data["text"], end="", flush=True, file=out)
                result["answer"] = str(result["answer"]) + data["text"]
            elif event in ("sources", "usage", "error", "notice"):
                result[event] = data
    print(file=out)
    result["first_token_s"] = first_token
    return result


def print_answer(result: dict[str, object]) -> None:
    sources = result.get("sources", {})
    print("\nSources:")
    for s in sources.get("sources", []) if isinstance(sources, dict) else []:
        heading = f" — {s['heading']}" if s.get("heading") else ""
        print(f"  [{s['n']}] {s['source_key']}#{s['chunk_number']}{heading} (score {s['score']:.3f})")
    usage = result.get("usage", {})
    if isinstance(usage, dict) and usage:
        print(
            f"\nTokens: {usage['prompt_tokens']} in, {usage['completion_tokens']} out, "
            f"{usage['embedding_tokens']} embedding; estimated cost ${usage['estimated_cost_usd']:.6f}; "
            f"first token after {usage['latency_ms']['first_token']:.0f} ms"
        )


def serve_instructions(stack: LocalStack, aws_url: str) -> str:
    return (
        f"\nServing. In another shell:\n"
        f"  export URL={stack.chat_url} CHAT_TOKEN={stack.token}   # bearer token (as ChatAuthType=NONE)\n"
        f'  curl -N "$URL/chat/completions/stream" -H "Authorization: Bearer $CHAT_TOKEN" '
        '-H \'content-type: application/json\' -d \'{"messages":[{"role":"user","content":"What is the '
        "on-call rotation?\"}]}'\n"
        + (
            f"  export URL={stack.iam_url} AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local "
            "AWS_REGION=us-east-1   # SigV4 (as the default AWS_IAM)\n"
            if stack.iam_url
            else ""
        )
        + f"  Browser: {stack.chat_url}/#token={stack.token}\n"
        f"  Add, change or delete files in the folder, or: aws s3 cp FILE s3://{stack.bucket}/docs/ "
        f"--endpoint-url {aws_url}\n"
        "Ctrl-C stops everything."
    )


def run(args: argparse.Namespace) -> int:
    docs = Path(args.docs)
    print("Starting the local stack (no AWS account or Docker needed):")
    with LocalStack(
        chat_port=args.port if args.serve else 0,
        iam_port=args.iam_port if args.serve else None,
        aws_port=args.aws_port if args.serve else 0,
    ) as stack:
        mirror = stack.mirror(docs)
        changes = mirror.sync(quiet=True)
        print(f"\nUploaded {len(changes)} documents from {docs}/ to s3://{stack.bucket}/{mirror.prefix}; indexing:")
        delivered = _one_pass(stack)
        counts = stack.lines.take() if stack.lines else None
        from local.report import summary

        print(f"Indexer: {summary(counts) if counts is not None else '?'} ({delivered} S3 event(s)).\n")
        failed = bool(counts and counts["failed"])

        print(f"Q: {args.question}\nA: ", end="", flush=True)
        result = ask(stack, args.question)
        if "error" in result:
            error = result["error"]
            print(f"error: {error['message'] if isinstance(error, dict) else error}")
            return 1
        print_answer(result)
        if args.serve:
            stack.keep_indexing(mirror)
            try:
                print(serve_instructions(stack, stack.env["AWS_ENDPOINT_URL"]), flush=True)
                idle = threading.Event()
                # Wake twice a second: a signal is delivered to any thread of the process, and a main
                # thread blocked in a wait with no timeout runs the Python handler (the SIGTERM ->
                # KeyboardInterrupt below) only when it next wakes, which could be never.
                while not idle.wait(0.5):
                    pass
            except KeyboardInterrupt:
                pass
    print("\nLocal stack stopped.")
    return 1 if failed and not args.serve else 0


def _one_pass(stack: LocalStack) -> int:
    """Deliver what is queued once; a failed file is reported now rather than retried for half a minute."""
    import boto3

    from local.sqs_pump import pump

    return pump(boto3.client("sqs"), stack.queue_url)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m local.demo", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("question", nargs="?", default=QUESTION)
    parser.add_argument("--docs", default=str(ROOT / "samples"), help="folder to index (make DOCS=...)")
    parser.add_argument("--serve", action="store_true", help="keep serving and indexing until Ctrl-C")
    parser.add_argument("--port", type=int, default=8080, help="chat app port with --serve (bearer token)")
    parser.add_argument("--iam-port", type=int, default=8081, help="SigV4-checking function URL port with --serve")
    parser.add_argument("--aws-port", type=int, default=8082, help="local S3/SQS (moto) port with --serve")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from rag_shared.errors import ConfigError

    from local.servers import PortInUse

    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops as cleanly as Ctrl-C
    try:
        return run(args)
    except (ConfigError, StackError, PortInUse) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # while starting or indexing; the stack has been stopped on the way out
        print("\nInterrupted; local stack stopped.", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
