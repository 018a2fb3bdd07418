"""Structured logging with secret redaction.

Every secret the process loads is registered here; a log-record factory replaces it with
``***`` in the message, its arguments and any exception text, for every logger in the process
(ours, botocore's, openai's), so a debug log of a request can never leak the key.
"""

from __future__ import annotations

import logging
import threading
import traceback
from typing import Any

from aws_lambda_powertools import Logger

_MASK = "***"
_MIN_SECRET_LEN = 8  # shorter strings would mask ordinary words
_secrets: set[str] = set()
_lock = threading.Lock()
_installed = False


def register_secret(value: str) -> None:
    """Mask ``value`` in every log record from now on."""
    if len(value) >= _MIN_SECRET_LEN:
        with _lock:
            _secrets.add(value)
    _install()


def redact(text: str) -> str:
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
            if not _secrets:
                return record
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


def get_logger(service: str) -> Logger:
    """A Powertools JSON logger; the same one per service across modules."""
    return Logger(service=service, child=False)
