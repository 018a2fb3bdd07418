"""The ``openai`` SDK against the chat function URL under its default ``AWS_IAM`` auth.

A function URL with ``AuthType: AWS_IAM`` answers only SigV4-signed requests (service ``lambda``), and
the SDK has no notion of SigV4. Its HTTP client does take an ``auth`` hook, so one that signs each
request (retries included) with the caller's AWS credentials is all it takes::

    python -m examples.openai_sigv4 "$URL" "What is our expense policy for meals?"

The caller needs ``lambda:InvokeFunctionUrl`` on the function. Credentials come from the usual chain
(environment, profile, SSO, instance role); the region is read from a function URL's host name, else
from ``AWS_REGION`` or ``AWS_DEFAULT_REGION`` (``make serve``'s SigV4 endpoint on 127.0.0.1 needs one).
Run it from the repository root, or copy :class:`FunctionUrlAuth` into your code.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from openai import DefaultHttpxClient, OpenAI

_R = TypeVar("_R", bound="_Request")


def region_of(url: str) -> str | None:
    """``https://<id>.lambda-url.<region>.on.aws/`` → ``<region>``; None for any other host."""
    labels = (urlsplit(url).hostname or "").split(".")
    if len(labels) >= 4 and labels[1] == "lambda-url" and labels[-2:] == ["on", "aws"]:
        return labels[2]
    return None


class _Request(Protocol):
    """What the signer needs of an httpx (openai < 3) or httpx2 (openai >= 3) request."""

    method: str
    url: Any
    headers: Any

    def read(self) -> bytes: ...


class FunctionUrlAuth:
    """Signs each request with SigV4 for service ``lambda``; the signature covers the body's hash.

    A plain callable, which both httpx and httpx2 (the openai SDK's HTTP library from 3.0) accept as
    ``auth=``, so it works whichever the installed SDK uses. It runs for every attempt, so the SDK's
    retries are signed afresh.
    """

    def __init__(self, region: str | None = None, session: boto3.Session | None = None) -> None:
        self._session = session or boto3.Session()
        self._region = region

    def __call__(self, request: _R) -> _R:
        region = (
            self._region
            or region_of(str(request.url))
            # boto3 reads only AWS_DEFAULT_REGION; the Lambda runtime and the AWS CLI set AWS_REGION
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or self._session.region_name
        )
        if not region:
            raise ValueError("cannot tell the function URL's region: set AWS_REGION (or pass region=)")
        credentials = self._session.get_credentials()
        if credentials is None:
            raise RuntimeError("no AWS credentials found (environment, profile, SSO or role) to sign the request")
        unsigned = AWSRequest(
            method=request.method,
            url=str(request.url),
            data=request.read(),
            headers={"content-type": request.headers.get("content-type", "application/json")},
        )
        SigV4Auth(credentials.get_frozen_credentials(), "lambda", region).add_auth(unsigned)
        # Replaces the SDK's "Authorization: Bearer ..." with the signature.
        for name, value in unsigned.headers.items():
            request.headers[name] = value
        return request


def client(url: str, *, region: str | None = None, session: boto3.Session | None = None) -> OpenAI:
    """An OpenAI client for ``<function URL>/v1`` whose requests are SigV4-signed."""
    return OpenAI(
        base_url=url.rstrip("/") + "/v1",
        api_key="unused: requests are signed with SigV4",
        http_client=DefaultHttpxClient(auth=FunctionUrlAuth(region, session)),
    )


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m examples.openai_sigv4 FUNCTION_URL QUESTION", file=sys.stderr)
        return 2
    from openai import APIConnectionError, APIStatusError

    try:
        stream = client(argv[0]).chat.completions.create(
            model="qwen-plus",
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": argv[1]}],
        )
        for chunk in stream:
            if chunk.choices:
                print(chunk.choices[0].delta.content or "", end="", flush=True)
    except (ValueError, RuntimeError, APIConnectionError) as exc:  # no region, no credentials, no server
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except APIStatusError as exc:  # 403: a bad signature or no lambda:InvokeFunctionUrl
        print(f"error: HTTP {exc.status_code}: {exc.message}", file=sys.stderr)
        return 1
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
