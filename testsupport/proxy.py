"""A TCP proxy that breaks connections on demand, for fault-injection tests.

:class:`FaultProxy` listens on a free port of 127.0.0.1 and forwards every
connection to a target (a test Dovecot's port, a webhook receiver).  Between
the two it can:

- :meth:`~FaultProxy.blackhole` -- stop forwarding without closing, in both
  directions: bytes are read and dropped, nobody hears a FIN or an RST.  That
  is what a half-open connection looks like to the client (a NAT entry expired,
  a cable pulled): writes succeed, reads never return.  New connections are
  blackholed too, or forwarded (``new=False``);
- :meth:`~FaultProxy.resume` -- forward new connections again (blackholed ones
  stay dead, as they would after a real outage);
- :meth:`~FaultProxy.reset` -- abort every open connection with an RST;
- :meth:`~FaultProxy.cut_after` -- abort a connection with an RST after N more
  bytes in one direction, optionally counted from the first occurrence of a
  byte pattern (``b"BODY[] {"``: in the middle of a FETCH literal)::

    with FaultProxy(server.host, server.imap_port) as proxy:
        account = mailbox.account(tls="none", port=proxy.port)
        proxy.cut_after(3000, trigger=b"BODY[] {")
        ...
        proxy.wait_cut()

The proxy runs an asyncio loop in a daemon thread; every public method is
thread-safe and returns once the change is in effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from inbound_mail.testing.wait import wait_until

from .process import Started

__all__ = ["Direction", "FaultProxy"]

Direction = Literal["client_to_server", "server_to_client"]
T = TypeVar("T")

_CHUNK = 64 * 1024
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends an RST


@dataclass(slots=True)
class _Cut:
    """An armed cut: ``remaining`` bytes to let through once ``trigger`` was seen."""

    direction: Direction
    remaining: int
    trigger: bytes | None
    once: bool
    tail: bytes = b""  # the end of the previous chunk, for a trigger split across two

    def feed(self, data: bytes) -> int | None:
        """How many bytes of ``data`` to forward before cutting, or None: no cut yet."""
        start = 0
        if self.trigger is not None:
            window = self.tail + data
            found = window.find(self.trigger)
            if found < 0:
                self.tail = window[-(len(self.trigger) - 1) :] if len(self.trigger) > 1 else b""
                return None
            start = max(0, found + len(self.trigger) - len(self.tail))
            self.trigger = None
        if start + self.remaining < len(data):
            return start + self.remaining
        self.remaining -= len(data) - start
        return None


class _Link:
    """One proxied connection: the client's and the server's transports."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.server: asyncio.StreamWriter | None = None
        self.blackholed = False
        self.cut: _Cut | None = None
        self.closed = False

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client, self.server) if w is not None]

    def abort(self) -> None:
        """RST both sides at once."""
        self.closed = True
        for writer in self.writers():
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            writer.transport.abort()

    def close(self) -> None:
        self.closed = True
        for writer in self.writers():
            writer.close()


class FaultProxy(Started):
    """A TCP proxy from ``127.0.0.1:port`` to ``(target_host, target_port)``; see the module doc."""

    host = "127.0.0.1"

    def __init__(self, target_host: str, target_port: int, *, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._new_mode: Literal["forward", "blackhole"] = "forward"
        self._pending_cut: _Cut | None = None
        self.accepted = 0
        """Connections accepted so far."""
        self.cuts = 0
        """Connections aborted by :meth:`cut_after` so far."""
        self.forwarded: dict[Direction, int] = {"client_to_server": 0, "server_to_client": 0}
        """Bytes forwarded so far, by direction."""

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        """Listen (on ``port``, or a free one that ``port`` then holds) and forward."""
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._loop = loop
        self._thread = threading.Thread(
            target=self._serve, args=(loop, ready), name="fault-proxy", daemon=True
        )
        self._thread.start()
        ready.wait(10)
        self._run(self._listen())

    def close(self) -> None:
        """Stop listening and close every connection."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._run(self._shutdown())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        self._loop = self._thread = None

    # -- faults ------------------------------------------------------------------------
    @property
    def open_connections(self) -> int:
        """Connections currently open (blackholed ones included)."""
        return self._call(lambda: sum(1 for link in self._links if not link.closed))

    def blackhole(self, *, new: bool = True) -> None:
        """Stop forwarding on every open connection, silently, both ways; ``new``:
        blackhole connections accepted from now on too, else forward them."""

        def apply() -> None:
            for link in self._links:
                link.blackholed = True
            self._new_mode = "blackhole" if new else "forward"

        self._call(apply)

    def resume(self) -> None:
        """Forward new connections again; blackholed ones stay silent until reset."""

        def apply() -> None:
            self._new_mode = "forward"

        self._call(apply)

    def reset(self) -> int:
        """Abort every open connection with an RST; return how many there were."""

        def apply() -> int:
            links = [link for link in self._links if not link.closed]
            for link in links:
                link.abort()
            return len(links)

        return self._call(apply)

    def cut_after(
        self,
        nbytes: int,
        *,
        direction: Direction = "server_to_client",
        trigger: bytes | None = None,
        once: bool = True,
    ) -> None:
        """Abort with an RST the first connection that forwards ``nbytes`` more bytes in
        ``direction`` (counted after ``trigger``, when given).  Applies to open and to
        new connections; ``once=False`` keeps it armed for every connection."""
        if nbytes < 0:
            raise ValueError("nbytes must be >= 0")

        def apply() -> None:
            self._pending_cut = _Cut(direction, nbytes, trigger, once)
            for link in self._links:
                link.cut = _Cut(direction, nbytes, trigger, once)

        self._call(apply)

    def wait_cut(self, count: int = 1, timeout: float = 30.0) -> None:
        """Wait until :meth:`cut_after` has aborted ``count`` connections in all."""
        wait_until(lambda: self.cuts >= count, timeout, message=f"{count} cut(s) by the proxy")

    # -- the loop's side ----------------------------------------------------------------
    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        loop.run_forever()

    def _call(self, func: Callable[[], T]) -> T:
        """Run ``func`` on the loop's thread and return its result."""

        async def run() -> T:
            return func()

        return self._run(run())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("the proxy is not started")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(writer)
        self._links.add(link)
        try:
            if self._new_mode == "blackhole":
                link.blackholed = True
                await self._drain_forever(reader)
                return
            if self._pending_cut is not None:
                cut = self._pending_cut
                link.cut = _Cut(cut.direction, cut.remaining, cut.trigger, cut.once)
            await self._forward(link, reader)
        finally:
            self._links.discard(link)
            if not link.closed:
                link.close()

    async def _forward(self, link: _Link, client_reader: asyncio.StreamReader) -> None:
        try:
            server_reader, link.server = await asyncio.open_connection(*self.target)
        except OSError:
            link.abort()  # the target is down: the client sees a reset, as if refused
            return
        await asyncio.gather(
            self._pump(link, client_reader, link.server, "client_to_server"),
            self._pump(link, server_reader, link.client, "server_to_client"),
        )

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: Direction,
    ) -> None:
        while not link.closed:
            try:
                data = await reader.read(_CHUNK)
            except OSError:  # reset by the peer: pass the reset on
                if not link.blackholed:
                    link.abort()
                return
            if link.closed:
                return
            if not data:
                if not link.blackholed:  # a FIN is passed on; a blackhole swallows it
                    _half_close(writer)
                return
            if link.blackholed:
                continue
            if not await self._send(link, writer, direction, data):
                return

    async def _send(
        self, link: _Link, writer: asyncio.StreamWriter, direction: Direction, data: bytes
    ) -> bool:
        """Forward ``data``, or its part before an armed cut; False once the link is gone."""
        cut = link.cut if link.cut is not None and link.cut.direction == direction else None
        upto = cut.feed(data) if cut is not None else None
        if upto is not None:
            data = data[:upto]
        self.forwarded[direction] += len(data)  # before the write: a reader never sees more
        try:
            writer.write(data)
            await writer.drain()
        except (OSError, RuntimeError):
            link.abort()
            return False
        if upto is None:
            return True
        self.cuts += 1
        link.abort()
        if cut is not None and cut.once:
            self._pending_cut = None
            for other in self._links:
                other.cut = None
        return False

    @staticmethod
    async def _drain_forever(reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            while await reader.read(_CHUNK):
                pass


def _half_close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()
