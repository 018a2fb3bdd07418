"""Token usage and its estimated cost, from the catalog's list prices."""

from __future__ import annotations

from pydantic import BaseModel

from rag_shared.config import EmbeddingModel, GeneratorModel


class Usage(BaseModel):
    """Tokens of one or more calls and what they cost (USD, estimated from list prices)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
            calls=self.calls + other.calls,
        )


def chat_usage(model: GeneratorModel, prompt_tokens: int, completion_tokens: int) -> Usage:
    price_in, price_out = model.prices_for(prompt_tokens)  # tiered models cost more for longer prompts
    cost = (prompt_tokens * price_in + completion_tokens * price_out) / 1000
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost_usd=cost, calls=1)


def embedding_usage(model: EmbeddingModel, tokens: int) -> Usage:
    return Usage(prompt_tokens=tokens, cost_usd=tokens * model.price_per_1k / 1000, calls=1)
