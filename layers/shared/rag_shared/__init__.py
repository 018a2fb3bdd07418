"""Shared code of the Qwen RAG service, shipped as a Lambda layer: config, secrets, DashScope
client, embedder, chunker and the OpenSearch vector store. Both functions import from here."""

__version__ = "0.1.0"
