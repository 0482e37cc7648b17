"""A bare HTTP/1.1 receiver for throughput runs: keep-alive, ``TCP_NODELAY``, one write
per answer (``200 +OK``), and nothing kept but (``X-Inbound-Mail-Id``, arrival time).

It records less than ``WebhookReceiver`` (inbound_mail.testing), so it stays out
of the way of the sink being measured.  (``WebhookReceiver`` once took ~23
requests a second a connection: it answered in two writes with Nagle's
algorithm on, so the body waited for the client's delayed ACK.  It sets
``TCP_NODELAY`` now.)
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\n+OK"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.server.record(self.headers.get("X-Inbound-Mail-Id", ""), time.monotonic())
        self.wfile.write(_ANSWER)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.arrivals: list[tuple[str, float]] = []

    def record(self, key: str, when: float) -> None:
        with self.lock:
            self.arrivals.append((key, when))


class FastReceiver:
    """``with FastReceiver() as r: ... r.url ... r.arrivals``"""

    path = "/inbound-sms"

    def __init__(self) -> None:
        self._server = _Server()
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.path}"

    @property
    def arrivals(self) -> list[tuple[str, float]]:
        with self._server.lock:
            return list(self._server.arrivals)

    def clear(self) -> None:
        with self._server.lock:
            self._server.arrivals.clear()

    def __enter__(self) -> FastReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
