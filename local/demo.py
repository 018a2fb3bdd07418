"""``make demo``: start the local stack, index the sample documents through S3 events, ask a
question and print the streamed answer with its sources, then stop everything.

    python -m local.demo ["your question"]        # one question, then exit
    python -m local.demo --serve                   # keep running for curl / the openai SDK
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import TextIO

import httpx
from httpx_sse import EventSource

from local.stack import ROOT, LocalStack

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
            raise SystemExit(f"chat request failed: {r.status_code} {r.read().decode()}")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.demo", description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default=QUESTION)
    parser.add_argument("--serve", action="store_true", help="keep the stack running until Ctrl-C")
    parser.add_argument("--port", type=int, default=8080, help="chat app port with --serve")
    args = parser.parse_args(argv)

    print("Starting the local stack (no AWS account or Docker needed):")
    with LocalStack(chat_port=args.port if args.serve else 0) as stack:
        keys = stack.upload(ROOT / "samples")
        print(f"\nUploaded {len(keys)} sample documents to s3://{stack.bucket}/samples/; indexing from S3 events…")
        delivered = stack.run_indexer()
        print(f"Indexer processed {delivered} S3 event(s).\n")

        print(f"Q: {args.question}\nA: ", end="", flush=True)
        result = ask(stack, args.question)
        if "error" in result:
            print(f"error: {result['error']}")
            return 1
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
        if args.serve:
            example = json.dumps({"messages": [{"role": "user", "content": "What is the on-call rotation?"}]})
            print(
                f"\nServing on {stack.chat_url}. Try:\n"
                f"  curl -N {stack.chat_url}/chat/completions/stream -H 'Authorization: Bearer {stack.token}' "
                f"-H 'Content-Type: application/json' -d '{example}'\n"
                "Ctrl-C stops everything."
            )
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                pass
    print("\nLocal stack stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
