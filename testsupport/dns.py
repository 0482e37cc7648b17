"""A small authoritative DNS server on 127.0.0.1 (UDP), for tests and the demo.

Built on dnspython's wire format (``dns.message``), the library the product
resolves with, so no other dependency is needed.  It answers TXT questions from
a table, and each name can be switched to answer NXDOMAIN, SERVFAIL, or nothing
at all (the client times out): the DNS failures DKIM verification must survive,
produced for real over a socket.  Any name not in the table is NXDOMAIN.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = ["Behaviour", "DnsServer"]

#: ``answer`` the TXT record; ``nxdomain``; ``servfail``; ``drop`` (never reply: a timeout).
Behaviour = Literal["answer", "nxdomain", "servfail", "drop"]
_MAX_UDP = 1232  # what the product's resolver advertises with EDNS0


class DnsServer:
    """``with DnsServer() as dns: dns.set_txt(name, value)``; ``dns.address`` is
    ``"127.0.0.1:PORT"`` for ``[parse] dns_servers``."""

    def __init__(self, *, ttl: int = 300) -> None:
        self.ttl = ttl
        self.queries: list[str] = []  # every question name received, lower-case, no final dot
        self._records: dict[str, str] = {}
        self._behaviour: dict[str, Behaviour] = {}
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set_txt(self, name: str, value: str) -> None:
        """Answer TXT ``value`` for ``name`` (split into 255-byte strings as DNS requires)."""
        with self._lock:
            self._records[_key(name)] = value
            self._behaviour.pop(_key(name), None)

    def behave(self, name: str, behaviour: Behaviour) -> None:
        """How to answer ``name`` from now on."""
        with self._lock:
            self._behaviour[_key(name)] = behaviour

    def count(self, name: str) -> int:
        with self._lock:
            return self.queries.count(_key(name))

    @contextmanager
    def behaving(self, name: str, behaviour: Behaviour) -> Iterator[None]:
        with self._lock:
            before = self._behaviour.get(_key(name), "answer")
        self.behave(name, behaviour)
        try:
            yield
        finally:
            self.behave(name, before)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def __enter__(self) -> DnsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self._answer(data)
            if reply is not None:
                try:
                    self._sock.sendto(reply, peer)
                except OSError:
                    continue

    def _answer(self, data: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
            question = query.question[0]
        except Exception:  # not a DNS query: ignore it, as a server would
            return None
        name = _key(question.name.to_text())
        with self._lock:
            self.queries.append(name)
            behaviour = self._behaviour.get(name, "answer")
            value = self._records.get(name)
        if behaviour == "drop":
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if behaviour == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif behaviour == "nxdomain" or value is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.TXT:
            chunks = [value[i : i + 255] for i in range(0, len(value), 255)] or [""]
            text = " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)
            response.answer.append(
                dns.rrset.from_text(question.name, self.ttl, dns.rdataclass.IN, "TXT", text)
            )
        return response.to_wire(max_size=_MAX_UDP)


def _key(name: str) -> str:
    return name.strip().lower().rstrip(".")
