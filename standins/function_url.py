"""A Lambda function URL with ``AuthType: AWS_IAM`` in front of the chat app, on loopback.

It checks each request's SigV4 signature as the function URL does, written from the published
algorithm (not with botocore, which the client under test signs with), refuses a bad one with 403
before the app sees it, and relays the app's response as it arrives, chunk by chunk.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, datetime
from urllib.parse import quote

import httpx

from standins.base import Request, StandInServer

_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,"
    r"\s*SignedHeaders=(?P<signed>[^,]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
MAX_SKEW_SECONDS = 300


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _canonical_query(query: str) -> str:
    pairs = [p.partition("=") for p in query.split("&") if p]
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, _, v in sorted(pairs))


class FunctionUrl(StandInServer):
    def __init__(self, upstream: str, credentials: dict[str, str], region: str = "us-east-1") -> None:
        super().__init__()
        self.upstream = upstream
        self.credentials = credentials  # access key id -> secret key, as IAM knows them
        self.region = region
        self.refused: list[str] = []  # the reason of each 403
        self.forwarded = 0

    def verify(self, req: Request) -> str | None:
        """None if the request is validly signed, else the reason it is not."""
        m = _AUTH.match(req.headers.get("Authorization", ""))
        if not m:
            return "Missing Authentication Token"
        if m["key"] not in self.credentials:
            return "The security token included in the request is invalid"
        if (m["region"], m["service"]) != (self.region, "lambda"):
            return (
                f"Credential should be scoped to a valid region and service 'lambda', not {m['region']}/{m['service']}"
            )
        amz_date = req.headers.get("X-Amz-Date", "")
        try:
            when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            return "X-Amz-Date is missing or malformed"
        if abs((datetime.now(UTC) - when).total_seconds()) > MAX_SKEW_SECONDS or amz_date[:8] != m["date"]:
            return "Signature expired or not yet current"
        signed = m["signed"].split(";")
        if "host" not in signed:
            return "The host header must be signed"
        path, _, query = req.handler.path.partition("?")
        canonical = "\n".join(
            [
                req.method,
                quote(path, safe="/-_.~"),  # the path arrives encoded once; non-S3 services sign it encoded twice
                _canonical_query(query),
                "".join(f"{h}:{' '.join((req.headers.get(h) or '').split())}\n" for h in signed),
                m["signed"],
                hashlib.sha256(req.body).hexdigest(),
            ]
        )
        scope = f"{m['date']}/{m['region']}/{m['service']}/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        key = _hmac(("AWS4" + self.credentials[m["key"]]).encode(), m["date"])
        for part in (m["region"], m["service"], "aws4_request"):
            key = _hmac(key, part)
        expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, m["signature"]):
            return "The request signature we calculated does not match the signature you provided"
        return None

    def handle(self, req: Request) -> None:
        reason = self.verify(req)
        if reason:
            with self.lock:
                self.refused.append(reason)
            req.send_json(403, {"Message": reason}, {"x-amzn-ErrorType": "AccessDeniedException"})
            return
        with self.lock:
            self.forwarded += 1
        headers = {k: v for k, v in req.headers.items() if k.lower() not in _HOP_BY_HOP | {"authorization"}}
        with (
            httpx.Client(base_url=self.upstream, timeout=60) as upstream,
            upstream.stream(req.method, req.handler.path, headers=headers, content=req.body) as resp,
        ):
            h = req.handler
            h.send_response(resp.status_code)
            for k, v in resp.headers.items():
                if k.lower() not in _HOP_BY_HOP:
                    h.send_header(k, v)
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            for data in resp.iter_raw():
                if data:  # an empty chunk would end the response
                    req.write_chunk(data)
            req.end_chunked()
