"""`make eval` (python -m bench.eval): index samples/ and bench/eval/corpus/ through the local stack
(moto S3 -> SQS -> the real indexer -> the stand-ins, or the real DashScope/OpenSearch when
DASHSCOPE_API_KEY/OPENSEARCH_URL are set), then score ``POST /v1/retrieve`` per mode."""

from __future__ import annotations

import os
import sys
from typing import Any

import httpx

from bench.eval.harness import CORPUS, SAMPLES, corpus_texts, load_questions, report
from local.stack import LocalStack


def main() -> int:
    questions = load_questions()
    texts = corpus_texts()
    with LocalStack(say=lambda *_: None) as stack:
        keys = stack.upload(SAMPLES, "samples/") + stack.upload(CORPUS, "corpus/")
        stack.run_indexer()
        print(f"indexed {len(keys)} files through the local stack's indexer")
        with httpx.Client(
            base_url=stack.chat_url, headers={"Authorization": f"Bearer {stack.token}"}, timeout=120
        ) as http:

            def post(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
                r = http.post("/v1/retrieve", json=body)
                return r.status_code, r.json()

            for line in report(post, questions, texts, real=bool(os.environ.get("DASHSCOPE_API_KEY"))):
                print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
