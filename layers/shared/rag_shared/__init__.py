"""Shared code of the Qwen RAG service, shipped as a Lambda layer: config, secrets, DashScope
client, embedder, chunker and the OpenSearch vector store. Both functions import from here."""

__version__ = "0.1.0"

from rag_shared import logs as _logs

_logs.install()  # redact secrets from every log record of any process that imports the layer
