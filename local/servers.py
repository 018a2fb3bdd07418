"""Run an ASGI app under uvicorn on a loopback port, in a thread: what `run.sh` does on Lambda."""

from __future__ import annotations

import errno
import socket
import threading
import time
from typing import Any

import uvicorn


class PortInUse(RuntimeError):
    """The requested port is taken; the message names the option that picks another."""


def bind(port: int, option: str = "--port") -> socket.socket:
    """A listening loopback socket (port 0: any free one). Bound here, before uvicorn starts, so a
    busy port is one clear error instead of uvicorn's log line and a thread that quietly ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(
                f"port {port} is already in use: stop what runs there or choose another with {option} N"
            ) from exc
        raise
    sock.listen(128)
    return sock


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AppServer:
    def __init__(self, app: Any, port: int | None = None, option: str = "--port") -> None:
        self.sock = bind(port or 0, option)
        self.port = int(self.sock.getsockname()[1])
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_keep_alive=30)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> AppServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.sock.close()
                raise RuntimeError("app server did not start (its error is logged above)")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
