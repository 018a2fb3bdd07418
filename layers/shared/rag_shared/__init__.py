"""Shared code of the Qwen RAG service, shipped as a Lambda layer: config, secrets, DashScope
client, embedder, chunker and the OpenSearch vector store. Both functions import from here."""

import sys as _sys

from rag_shared import logs as _logs

__version__ = "0.1.0"

# httpx's __init__ imports its command line (httpx._main: click, pygments, rich) and falls back to a
# stub when one is missing, as pygments and rich are in the layer; click is there (uvicorn needs it),
# so every cold start imported click for nothing. A None in sys.modules makes that import fail at once
# (Python reference, "The module cache"); the functions never run httpx's command line.
_sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

_logs.install()  # redact secrets from every log record of any process that imports the layer
