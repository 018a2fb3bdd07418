"""Per-answer CloudWatch metrics for the chat function: what each answer cost and how fast it came.

One EMF line per request on stdout, which Lambda sends to CloudWatch Logs, where CloudWatch turns
it into metrics: no API call on the request path. ``EphemeralMetrics`` keeps no state between
instances, so concurrent requests (under uvicorn) cannot mix their figures.

Metrics (namespace ``POWERTOOLS_METRICS_NAMESPACE``, by ``service`` and by ``service`` + ``model``):
``ChatCompleted``, ``ChatAbandoned`` (the caller left mid-answer), ``ChatRejected`` (moderation, unknown
model, prompt too long), ``ChatFailed`` (DashScope or OpenSearch failing, throttling), ``PromptTokens``,
``CompletionTokens``, ``EmbeddingTokens``, ``EstimatedCostUSD`` (answer, embedding, rerank and rewrite),
``RetrievalMs``, ``FirstTokenMs``, ``TotalMs``; when reranking ran (or failed) ``RerankTokens``,
``RerankFallback`` (1: search order kept) and ``RerankMs``; when a follow-up was rewritten (or the
rewrite failed) ``RewriteTokens``, ``RewriteFallback`` and ``RewriteMs``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

__all__ = ["Figures", "MetricUnit", "MetricsSink", "emit_emf"]

# name -> (unit, value)
Figures = Mapping[str, tuple[MetricUnit, float]]
MetricsSink = Callable[[str, Figures], None]  # (model, figures)


def emit_emf(model: str, figures: Figures) -> None:
    """Write ``figures`` as one CloudWatch embedded-metric-format line."""
    metrics = EphemeralMetrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "QwenRag"), service="chat")
    # two dimension sets: [service] for totals an alarm can watch, [service, model] for the split
    metrics.add_dimensions(service="chat", model=model)
    for name, (unit, value) in figures.items():
        metrics.add_metric(name=name, unit=unit, value=value)
    metrics.flush_metrics()
