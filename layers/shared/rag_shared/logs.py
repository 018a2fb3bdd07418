"""Structured logging with secret redaction.

Every secret the process loads is registered here; a log-record factory replaces it with
``***`` in the message, its arguments and any exception text, for every logger in the process
(ours, botocore's, openai's), so a debug log of a request can never leak the key.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import traceback
from typing import Any

from aws_lambda_powertools import Logger

_MASK = "***"
_MIN_SECRET_LEN = 8  # shorter strings would mask ordinary words
_secrets: set[str] = set()
# Secrets recognisable by shape, masked even before (or without) registration: botocore's DEBUG
# log prints GetSecretValue's raw response body before our code ever sees the value.
_PATTERNS = [
    (
        re.compile(r'((?:api[_-]?key|DASHSCOPE_API_KEY)\\?"?\s*[:=]\s*\\?"?)[A-Za-z0-9._\-]{8,}', re.I),
        r"\1***",
    ),
    (re.compile(r"(Bearer\s+)[A-Za-z0-9._\-]{8,}"), r"\1***"),
    (re.compile(r'("?SecretString"?\s*[:=]\s*)("(?:[^"\\]|\\.)*"|\S+)'), r'\1"***"'),
]
_lock = threading.Lock()
_installed = False


def register_secret(value: str) -> None:
    """Mask ``value`` in every log record from now on."""
    if len(value) >= _MIN_SECRET_LEN:
        with _lock:
            _secrets.add(value)
    _install()


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, _MASK)
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
    "openai",
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
