"""A loopback TCP proxy that can be switched off and counts what passes: while down it refuses
connections, as an unreachable endpoint does (Secrets Manager unavailable, then available again);
``accepted`` and ``open`` say how many connections clients made through it and how many are still
open (SnapStart's hooks must close every pooled connection, then open new ones)."""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit, urlunsplit


class FlakyProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.up = True
        self.accepted = 0  # connections relayed so far
        self.open = 0  # of those, still open on both sides
        self.lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def in_front_of(self, url: str) -> str:
        """``url`` (the target's) with its host and port replaced by this proxy's."""
        parts = urlsplit(url)
        return urlunsplit((parts.scheme, f"127.0.0.1:{self.port}", parts.path, parts.query, ""))

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            if not self.up:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()  # reset: the caller sees a connection error
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.accepted += 1
                self.open += 1
            pending = [2]  # pumps still running; the last one to end closes both sockets
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b, pending), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, pending: list[int]) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (dst, src):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self.lock:
                pending[0] -= 1
                if pending[0] == 0:
                    self.open -= 1
                    src.close()
                    dst.close()

    def close(self) -> None:
        self._closed = True
        self._sock.close()
