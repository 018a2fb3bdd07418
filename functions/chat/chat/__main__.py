"""``python -m chat``: the chat app under uvicorn on ``127.0.0.1:$PORT``, as ``run.sh`` starts it for the
Lambda Web Adapter.

``python -m uvicorn`` parses four options with uvicorn's command line (``uvicorn.main`` and click), paid
on every cold start; here the same server is built from ``uvicorn.config.Config`` and
``uvicorn.server.Server``. uvicorn's package ``__init__`` imports the command line as well, so the
package is entered without running it: its modules need only ``Config`` from it
(``uvicorn.lifespan.on``), which is set. Everything else (``uvicorn.main`` included) still imports.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from uvicorn.server import Server


# FastAPI imports pydantic.v1 (~40 ms of a cold start, CPU, quiet machine) only to ask whether each
# route's models are pydantic v1 models, which it rejects; it treats an ImportError as "no" (fastapi
# _compat/shared.py). This app has none: in the server's process (not in tests, which import the app
# elsewhere) a None in sys.modules makes that import fail at once.
sys.modules.setdefault("pydantic.v1", None)  # type: ignore[arg-type]


def uvicorn_without_cli() -> None:
    """Put uvicorn in ``sys.modules`` without executing its ``__init__`` (which imports click)."""
    if "uvicorn" in sys.modules:
        return
    spec = importlib.util.find_spec("uvicorn")
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError("uvicorn")
    package = importlib.util.module_from_spec(spec)  # __path__ set, __init__ not run
    sys.modules["uvicorn"] = package
    from uvicorn.config import Config
    from uvicorn.server import Server

    package.Config = Config  # type: ignore[attr-defined]  # `from uvicorn import Config` (lifespan)
    package.Server = Server  # type: ignore[attr-defined]


def server(port: int | None = None) -> Server:
    """The server run.sh starts: what ``uvicorn --host 127.0.0.1 --port $PORT --no-access-log
    --timeout-keep-alive 60 chat.app:app`` builds."""
    uvicorn_without_cli()
    from uvicorn.config import Config
    from uvicorn.server import Server

    config = Config(
        "chat.app:app",
        host="127.0.0.1",
        port=int(os.environ.get("PORT") or 8000) if port is None else port,
        access_log=False,
        timeout_keep_alive=60,  # the adapter keeps its connection to the app open between requests
    )
    return Server(config)


if __name__ == "__main__":
    server().run()
