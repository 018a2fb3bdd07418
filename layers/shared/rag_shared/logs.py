"""Structured logging with secret redaction.

Every secret the process loads is registered here; a log-record factory replaces it with
``***`` in the message, its arguments and any exception text, for every logger in the process
(ours, botocore's, httpx's), so a debug log of a request can never leak the key: as is,
JSON-escaped, in a bytes repr, or URL-encoded (``tests/shared/test_log_redaction.py``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import traceback
import urllib.parse
from typing import Any

from aws_lambda_powertools import Logger

_MASK = "***"
_MIN_SECRET_LEN = 8  # shorter strings would mask ordinary words
_secrets: set[str] = set()
# A secret reaches a log in more than one spelling: as is, JSON-escaped inside a JSON string,
# in a bytes repr (botocore's "Response body: b'...'" doubles every backslash), URL-encoded.
# Quotes around keys and values may carry any number of escaping backslashes or be %-encoded.
_Q = r"""(?:\\*["']|%5[Cc]|%2[27])*"""
_SEP = rf"{_Q}\s*(?:[:=]|%3[AaDd])\s*{_Q}"
_KEYS = r"api[_-]?key|apikey|DASHSCOPE_API_KEY|token|secret|password|x-api-key"
# A value ends at a quote, backslash, blank or separator; ``[^\\]`` after an escape run keeps the
# string pattern free of backtracking (no ReDoS in the logging path).
_PATTERNS = [
    (re.compile(rf"((?<![A-Za-z_])(?:{_KEYS}){_SEP})[^\s\"'\\&,;}}\]]{{8,}}", re.I), r"\1***"),
    (re.compile(r"(Bearer(?:\s+|%20|\+))[A-Za-z0-9._~+/=%\-]{8,}", re.I), r"\1***"),
    # Secrets Manager's SecretString, whatever it holds, in JSON, escaped JSON or a bytes repr; any
    # escaped quote counts as inside it (masking too much beats stopping early)
    (
        re.compile(r"(SecretString" + _Q + r"\s*[:=]\s*)(\\*\"(?:[^\"\\]|\\+[^\\])*\"|\S+)"),
        r'\1"***"',
    ),
]
_lock = threading.Lock()
_installed = False


def _spellings(value: str) -> set[str]:
    """The forms ``value`` takes inside JSON, a bytes repr, both nested, and a URL."""
    json_escaped = json.dumps(value)[1:-1]
    forms = {
        value,
        json_escaped,
        repr(value.encode())[2:-1],
        repr(json_escaped.encode())[2:-1],
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote_plus(value),
    }
    return {f for f in forms if len(f) >= _MIN_SECRET_LEN}


def register_secret(value: str) -> None:
    """Mask ``value`` (in every spelling it can take) in every log record from now on."""
    if len(value) >= _MIN_SECRET_LEN:
        with _lock:
            _secrets.update(_spellings(value))
    _install()


def redact(text: str) -> str:
    # Known secrets first, longest spelling first: a pattern could mask part of one (``...Secret=x``)
    # and leave the rest unrecognisable.
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, _MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _install() -> None:
    global _installed
    with _lock:
        if _installed:
            return
        base_factory = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = base_factory(*args, **kwargs)
            try:
                message = record.getMessage()
            except Exception:  # a bad format string must not break logging
                message = str(record.msg)
            record.msg, record.args = redact(message), None
            if record.exc_info and record.exc_info[1] is not None:
                text = "".join(traceback.format_exception(*record.exc_info))
                clean = redact(text)
                if clean != text:
                    record.exc_info, record.exc_text = None, None
                    record.msg = f"{record.msg}\n{clean}"
            return record

        logging.setLogRecordFactory(factory)
        _installed = True


# Client libraries whose DEBUG logs print whole request and response bodies: document text,
# prompts, vectors. They stay at WARNING unless WIRE_DEBUG_LOGS=true asks for them.
WIRE_LOGGERS = (
    "opensearch",
    "opensearchpy",
    "opensearchpy.trace",
    "urllib3",
    "botocore",
    "boto3",
    "s3transfer",
    "httpx",
    "httpcore",
    "httpx2",
    "httpcore2",
)


def install() -> None:
    """Turn redaction on and quiet the wire loggers (idempotent); the layer does it at import."""
    _install()
    if os.environ.get("WIRE_DEBUG_LOGS", "").lower() not in ("1", "true", "yes"):
        for name in WIRE_LOGGERS:
            lg = logging.getLogger(name)
            if lg.level == logging.NOTSET or lg.level < logging.WARNING:
                lg.setLevel(logging.WARNING)


def get_logger(service: str) -> Logger:
    """A Powertools JSON logger; the same one per service across modules."""
    return Logger(service=service, child=False)
