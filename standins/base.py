"""A threaded loopback HTTP server for the stand-ins: real sockets, HTTP/1.1 keep-alive,
chunked streaming, and the ability to drop a connection mid-response."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import orjson


class DropConnection(Exception):
    """Raised by a handler to close the socket without (finishing) a response."""


class Request:
    def __init__(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        self.handler = handler
        parts = urlsplit(handler.path)
        self.method = handler.command
        self.path = parts.path
        self.query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.headers = handler.headers
        self.body = body

    def json(self) -> Any:
        return orjson.loads(self.body or b"null")

    # responses

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = orjson.dumps(payload)  # fast: embedding bodies hold tens of thousands of floats
        h = self.handler
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if self.method != "HEAD":
            h.wfile.write(data)

    def send_empty(self, status: int) -> None:
        h = self.handler
        h.send_response(status)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def start_chunked(self, status: int, content_type: str) -> None:
        h = self.handler
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Transfer-Encoding", "chunked")
        h.send_header("Cache-Control", "no-cache")
        h.end_headers()

    def write_chunk(self, data: bytes) -> None:
        w = self.handler.wfile
        w.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        w.flush()

    def end_chunked(self) -> None:
        self.handler.wfile.write(b"0\r\n\r\n")
        self.handler.wfile.flush()

    def drop(self) -> None:
        """Close the socket abruptly (RST), as a crashed upstream would."""
        conn: socket.socket = self.handler.connection
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError:
            pass
        raise DropConnection


class StandInServer:
    """Subclasses implement :meth:`handle`. ``start()`` binds 127.0.0.1 on a free port."""

    def __init__(self) -> None:
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.lock = threading.RLock()

    def handle(self, req: Request) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self, port: int = 0) -> Self:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                # headers and body go out in separate writes: without this, Nagle plus delayed
                # ACKs add ~40 ms to every response and the stand-in, not the product, is measured
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _dispatch(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = self._read_chunked()
                try:
                    outer.handle(Request(self, body))
                except DropConnection:
                    self.close_connection = True
                    self.connection.close()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def _read_chunked(self) -> bytes:
                out = b""
                while True:
                    size = int(self.rfile.readline().strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _dispatch

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

        self._server = Server(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name=type(self).__name__)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
