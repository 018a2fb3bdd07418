"""Prompt building: system prompt, retrieved passages with their sources, and history, fitted into
the model's context window by an estimated-token budget. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rag_shared.store import SearchHit
from rag_shared.tokens import estimate_tokens, messages_tokens

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant for the user's documents. Answer from the context passages when they "
    "are relevant and cite them as [n]. If they do not contain the answer, say so, then answer from "
    "general knowledge. Answer in the language of the question."
)
# Estimates err high, but leave room for the chat template and the model's own accounting.
SAFETY_MARGIN = 256


@dataclass
class Prompt:
    messages: list[dict[str, Any]]
    passages: list[SearchHit]
    dropped_messages: int = 0
    dropped_passages: int = 0
    tokens: int = 0
    notes: list[str] = field(default_factory=list)


def passage_block(hits: list[SearchHit]) -> str:
    """Numbered passages with their source, the format the model is told to cite."""
    parts = []
    for n, h in enumerate(hits, start=1):
        where = f"{h.source_key}#{h.chunk_number}" + (f" ({h.heading})" if h.heading else "")
        parts.append(f"[{n}] source: {where}\n{h.text.strip()}")
    return "\n\n".join(parts)


def system_message(system_prompt: str, hits: list[SearchHit]) -> dict[str, Any]:
    if not hits:
        return {"role": "system", "content": system_prompt}
    return {"role": "system", "content": f"{system_prompt}\n\nContext passages:\n\n{passage_block(hits)}"}


def build_prompt(
    history: list[dict[str, Any]],
    hits: list[SearchHit],
    *,
    system_prompt: str,
    context_window: int,
    max_output_tokens: int,
) -> Prompt:
    """Fit into ``context_window - max_output_tokens``: drop history oldest first (the last user
    message always stays), then passages lowest score first."""
    budget = context_window - max_output_tokens - SAFETY_MARGIN
    *earlier, last = history
    earlier = list(earlier)
    passages = sorted(hits, key=lambda h: -h.score)
    dropped_messages = dropped_passages = 0

    def total() -> int:
        return messages_tokens([system_message(system_prompt, passages), *earlier, last])

    while total() > budget and earlier:
        earlier.pop(0)
        dropped_messages += 1
    while total() > budget and passages:
        passages.pop()
        dropped_passages += 1
    used = total()
    if used > budget:
        raise PromptTooLong(
            f"the question alone is about {estimate_tokens(str(last.get('content')))} tokens; "
            f"the model accepts about {budget} with {max_output_tokens} reserved for the answer"
        )
    prompt = Prompt(
        [system_message(system_prompt, passages), *earlier, last], passages, dropped_messages, dropped_passages, used
    )
    if dropped_messages:
        prompt.notes.append(f"dropped {dropped_messages} oldest messages to fit the context window")
    if dropped_passages:
        prompt.notes.append(f"dropped {dropped_passages} lowest-scoring passages to fit the context window")
    return prompt


class PromptTooLong(ValueError):
    pass
