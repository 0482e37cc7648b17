"""The FaultProxy itself, against a tiny echo server: forwarding, cuts, blackholes, resets."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from testsupport.proxy import FaultProxy

pytestmark = pytest.mark.faults

GREETING = b"* OK hello\r\n" + b"".join(
    b"* %d FETCH (BODY[] {40}\r\n" % i + b"x" * 40 for i in range(50)
)


HELLO = b"a0 HELLO\r\n"


class _Echo(socketserver.BaseRequestHandler):
    """Waits for the client's first bytes, sends GREETING, then echoes every byte back.

    The client speaks first so that no byte, and so no cut, can reach it before its
    connect() has returned: a reset that lands between the handshake and connect()'s
    SO_ERROR check would fail the connect itself.
    """

    def handle(self) -> None:
        heard = b""
        with contextlib.suppress(OSError):
            while len(heard) < len(HELLO) and (chunk := self.request.recv(len(HELLO) - len(heard))):
                heard += chunk
        if heard != HELLO:
            return
        self.request.sendall(GREETING)
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    server = _Server(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        with FaultProxy("127.0.0.1", server.server_address[1]) as fault_proxy:
            yield fault_proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def connect(proxy: FaultProxy, timeout: float = 2.0) -> socket.socket:
    """A connection through the proxy that has said HELLO (the echo server then greets)."""
    sock = socket.create_connection((proxy.host, proxy.port), timeout=timeout)
    sock.sendall(HELLO)
    return sock


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def read_all(sock: socket.socket) -> bytes:
    """Everything until EOF or a reset."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_forwards_both_ways(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert read_exactly(sock, len(GREETING)) == GREETING
        sock.sendall(b"a1 NOOP\r\n")
        assert read_exactly(sock, 9) == b"a1 NOOP\r\n"
    assert proxy.forwarded["client_to_server"] == len(HELLO) + 9
    assert proxy.forwarded["server_to_client"] == len(GREETING) + 9


def test_cut_after_trigger_resets_in_the_middle(proxy: FaultProxy) -> None:
    trigger = b"* 3 FETCH (BODY[] {"
    proxy.cut_after(10, trigger=trigger)
    with connect(proxy) as sock:
        data = read_all(sock)
    expected = GREETING[: GREETING.index(trigger) + len(trigger) + 10]
    assert data == expected
    assert proxy.cuts == 1
    with connect(proxy) as sock:  # once: the next connection is whole
        assert read_exactly(sock, len(GREETING)) == GREETING


def test_blackhole_silences_open_connections_without_closing_them(proxy: FaultProxy) -> None:
    with connect(proxy, timeout=0.5) as sock:
        read_exactly(sock, len(GREETING))
        proxy.blackhole(new=False)
        sock.sendall(b"a1 NOOP\r\n")  # the write succeeds, as on a half-open connection
        with pytest.raises(TimeoutError):
            sock.recv(1)
        assert proxy.open_connections >= 1
        with connect(proxy) as fresh:
            assert read_exactly(fresh, len(GREETING)) == GREETING


def test_blackholed_new_connections_until_resume(proxy: FaultProxy) -> None:
    proxy.blackhole(new=True)
    with connect(proxy, timeout=0.5) as sock, pytest.raises(TimeoutError):
        sock.recv(1)
    proxy.resume()
    with connect(proxy) as sock:
        assert read_exactly(sock, len(GREETING)) == GREETING


def test_reset_aborts_every_connection(proxy: FaultProxy) -> None:
    with connect(proxy) as first, connect(proxy) as second:
        read_exactly(first, len(GREETING))
        read_exactly(second, len(GREETING))
        assert proxy.reset() == 2
        for sock in (first, second):
            with pytest.raises(ConnectionResetError):
                sock.recv(1)
