"""Exception classes shared by both functions.

Each carries ``retryable`` so callers decide between "fail the record, SQS retries it" and
"report and skip", and ``status`` so the chat API can map it to an HTTP code. Messages never
contain the API key or document text.
"""

from __future__ import annotations


class RagError(Exception):
    """Base class. ``retryable``: a later attempt may succeed without anyone changing anything."""

    retryable: bool = False
    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id

    def __str__(self) -> str:
        if self.request_id:
            return f"{self.message} (request id {self.request_id})"
        return self.message


class ConfigError(RagError):
    """A setting is missing or invalid; raised at start-up."""

    code = "config_error"


class MissingApiKeyError(ConfigError):
    code = "missing_api_key"


class SecretUnavailableError(RagError):
    """Secrets Manager could not be read just now (throttled, network, KMS)."""

    retryable = True
    status = 503
    code = "secret_unavailable"


# --- DashScope ----------------------------------------------------------------------------------


class DashScopeError(RagError):
    """Any failure reported by DashScope or on the way to it."""

    status = 502
    code = "dashscope_error"


class InvalidApiKeyError(DashScopeError):
    status = 502
    code = "invalid_api_key"


class AccessDeniedError(DashScopeError):
    """403: model not activated, or the account is in arrears (``Arrearage``)."""

    code = "access_denied"


class ModelNotFoundError(DashScopeError):
    status = 400
    code = "model_not_found"


class ContentModerationError(DashScopeError):
    """DashScope's ``data_inspection_failed``: the input or output was flagged. Not retryable."""

    status = 400
    code = "content_moderation"


class ContextLengthExceededError(DashScopeError):
    """The prompt is longer than the model accepts (``Range of input length should be [1, N]``)."""

    status = 400
    code = "context_length_exceeded"


class BadRequestError(DashScopeError):
    status = 400
    code = "bad_request"


class ThrottledError(DashScopeError):
    """Still 429 after the client's retries with backoff."""

    retryable = True
    status = 429
    code = "throttled"


class ServiceUnavailableError(DashScopeError):
    """5xx, timeouts or dropped connections that outlasted the retries."""

    retryable = True
    status = 503
    code = "dashscope_unavailable"


class EmbeddingDimensionError(DashScopeError):
    """A returned vector has a dimension other than the configured one."""

    code = "embedding_dimension_mismatch"


# --- Vector store -------------------------------------------------------------------------------


class StoreError(RagError):
    retryable = True
    status = 503
    code = "store_error"


class IndexMappingError(StoreError):
    """The existing index was built for another dimension/space: re-embedding is needed, not a retry."""

    retryable = False
    status = 500
    code = "index_mapping_mismatch"


class BulkWriteError(StoreError):
    """Some bulk items still failed after retrying only those items."""

    code = "bulk_write_failed"
