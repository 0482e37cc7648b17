"""A real, scriptable HTTP receiver on 127.0.0.1 for webhook tests and benchmarks.

It records every request and answers from a script: queued one-off answers
first (:meth:`WebhookReceiver.script`, :meth:`WebhookReceiver.fail`), then the
default answer (``200 +OK``, the provider's contract).  An answer can be any
status, body and headers (``Retry-After``, ``Location``), come after a delay,
or not come at all (``action="close"``: the connection is dropped after the
request was read), or trickle in one byte at a time (``action="trickle"``).
:meth:`WebhookReceiver.down` closes the port and every open
connection (a client then sees "connection refused"); :meth:`WebhookReceiver.up`
listens on the same port again::

    with WebhookReceiver() as receiver:
        receiver.fail(3)                       # three 503s, then +OK
        ...  # point a webhook sink at receiver.url
        receiver.wait_for(4)
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs

from .wait import wait_until

__all__ = ["Answer", "ReceivedRequest", "WebhookReceiver"]


@dataclass(frozen=True, slots=True)
class Answer:
    """What the receiver does with one request."""

    status: int = 200
    body: bytes | str = b"+OK"
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0  # seconds before answering (or closing)
    action: Literal["respond", "close", "trickle"] = "respond"
    trickle: float = 1.0  # "trickle": the answer goes out one byte every this many seconds

    def encoded_body(self) -> bytes:
        return self.body.encode("utf-8") if isinstance(self.body, str) else self.body


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One request as the receiver read it."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    received_at: float  # time.monotonic()
    connection: int = 0  # a number per TCP connection, to observe keep-alive
    answer: Answer = field(default_factory=Answer)

    def form(self) -> dict[str, list[str]]:
        """The body parsed as ``application/x-www-form-urlencoded``."""
        return parse_qs(self.body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)

    def json(self) -> Any:
        return json.loads(self.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    receiver: WebhookReceiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: a client that hangs up or rejects the certificate is expected here."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real receivers do
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, each answer
        # waits ~40 ms for the client's delayed ACK (Nagle).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.number = self.server.receiver._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.receiver._untrack(self.connection)

    def do_POST(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        answer = self.server.receiver._next_answer()
        request = ReceivedRequest(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            received_at=time.monotonic(),
            connection=self.number,
            answer=answer,
        )
        self.server.receiver._record(request)
        if answer.delay:
            time.sleep(answer.delay)
        if answer.action == "close":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        payload = answer.encoded_body()
        if answer.action == "trickle":
            self._trickle(answer, payload)
            return
        self.send_response(answer.status)
        for name, value in answer.headers:
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _trickle(self, answer: Answer, payload: bytes) -> None:
        """The whole answer, status line first, one byte at a time, until the client leaves."""
        head = [f"HTTP/1.1 {answer.status} OK"]
        head += [f"{name}: {value}" for name, value in answer.headers]
        head.append(f"Content-Length: {len(payload)}")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload
        self.close_connection = True
        stop = self.server.receiver._stopped
        for i in range(len(data)):
            try:
                self.connection.sendall(data[i : i + 1])
            except OSError:
                return  # the client gave up: what a deadline is for
            if stop.wait(answer.trickle):
                return

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read ``requests`` instead."""


class WebhookReceiver:
    """A threaded HTTP server on 127.0.0.1 (a free port unless ``port`` is given)."""

    def __init__(
        self,
        *,
        port: int = 0,
        default: Answer | None = None,
        ssl_context: ssl.SSLContext | None = None,
        path: str = "/inbound-sms",
    ) -> None:
        self._lock = threading.Lock()
        self._answers: deque[Answer] = deque()
        self._requests: list[ReceivedRequest] = []
        self._connections: dict[socket.socket, int] = {}
        self._count = 0
        self._stopped = threading.Event()  # ends trickling answers at down()
        self._ssl = ssl_context
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.default = default or Answer()
        self.path = path
        self.port = port

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> WebhookReceiver:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl else "http"
        return f"{scheme}://127.0.0.1:{self.port}{self.path}"

    def up(self) -> None:
        """Listen (again, on the same port once one was chosen)."""
        if self._server is not None:
            return
        self._stopped.clear()
        server = _Server(("127.0.0.1", self.port), _Handler)
        if self._ssl is not None:
            server.socket = self._ssl.wrap_socket(server.socket, server_side=True)
        server.receiver = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def down(self) -> None:
        """Stop listening and drop every open connection: clients get refused/reset."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopped.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):  # already gone
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)

    # -- scripting -------------------------------------------------------------------
    def script(self, *answers: Answer) -> None:
        """Queue one-off answers, used in order before the default one."""
        with self._lock:
            self._answers.extend(answers)

    def fail(
        self, times: int, *, status: int = 503, body: str = "busy", retry_after: str | None = None
    ) -> None:
        """Answer the next ``times`` requests with ``status`` (and ``Retry-After``)."""
        headers = (("Retry-After", retry_after),) if retry_after is not None else ()
        self.script(*[Answer(status=status, body=body, headers=headers)] * times)

    # -- observation ---------------------------------------------------------------
    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every request received so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedRequest]:
        """Wait until ``count`` requests have arrived; return them all."""
        wait_until(
            lambda: len(self._requests) >= count, timeout, message=f"{count} requests at {self.url}"
        )
        return self.requests

    def clear(self) -> None:
        """Forget the recorded requests (the script is kept)."""
        with self._lock:
            self._requests.clear()

    # -- called by the handler threads ------------------------------------------------
    def _next_answer(self) -> Answer:
        with self._lock:
            return self._answers.popleft() if self._answers else self.default

    def _record(self, request: ReceivedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _track(self, conn: socket.socket) -> int:
        with self._lock:
            self._count += 1
            self._connections[conn] = self._count
            return self._count

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.pop(conn, None)
