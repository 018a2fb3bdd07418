"""A stand-in Lambda context: the attributes Powertools reads from the real one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FakeContext:
    """The attributes Powertools reads from a Lambda context."""

    function_name: str = "indexer"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:indexer"
    aws_request_id: str = "req-0001"
    function_version: str = "$LATEST"
    remaining_ms: int = 300_000  # the function's timeout, as at the start of an invocation

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms
