"""DKIM keys and signatures for tests, benchmarks and the demo.

A key is generated with the ``openssl`` command (as :mod:`.certs` does: the tool
comes with Dovecot wherever the test servers run); signing is dkimpy's, the
library the product verifies with.  :meth:`DkimKey.publish` puts the public key
into a :class:`~testsupport.dns.DnsServer`.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from dataclasses import dataclass

import dkim

from . import HarnessError
from .dns import DnsServer

__all__ = ["DkimKey", "authentication_results", "prepend_headers"]

_DEFAULT_HEADERS = ("from", "to", "subject", "date", "message-id", "content-type")


class DkimKeyError(HarnessError):
    """openssl could not make a key."""


@dataclass(frozen=True, slots=True)
class DkimKey:
    """An RSA key: ``private_pem`` signs, ``txt`` is its DNS record."""

    private_pem: bytes
    public_b64: str
    selector: str
    domain: str

    @classmethod
    def generate(cls, domain: str = "agiletelecom.com", selector: str = "test") -> DkimKey:
        private = _openssl("genrsa", "2048")
        public_der = _openssl("rsa", "-pubout", "-outform", "DER", stdin=private)
        return cls(private, base64.b64encode(public_der).decode(), selector, domain)

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def txt(self) -> str:
        return f"v=DKIM1; k=rsa; p={self.public_b64}"

    def publish(self, server: DnsServer) -> None:
        server.set_txt(self.record_name, self.txt)

    def sign(
        self,
        raw: bytes,
        *,
        domain: str | None = None,
        headers: tuple[str, ...] = _DEFAULT_HEADERS,
        length: bool = False,
    ) -> bytes:
        """``raw`` with a DKIM-Signature prepended (``d=`` is ``domain``, else the key's)."""
        signature = dkim.sign(
            raw,
            self.selector.encode(),
            (domain or self.domain).encode(),
            self.private_pem,
            include_headers=[h.encode() for h in headers],
            length=length,
        )
        return bytes(signature) + raw


def authentication_results(authserv_id: str, results: str) -> bytes:
    """One ``Authentication-Results`` header line (CRLF included)."""
    return f"Authentication-Results: {authserv_id}; {results}\r\n".encode()


def prepend_headers(raw: bytes, *lines: bytes) -> bytes:
    """What a receiving server does: its header lines go on top of the message."""
    return b"".join(lines) + raw


def _openssl(*args: str, stdin: bytes | None = None) -> bytes:
    binary = shutil.which("openssl")
    if binary is None:
        raise DkimKeyError("the openssl command is missing: apt-get install openssl")
    try:
        done = subprocess.run(
            [binary, *args], input=stdin, check=True, capture_output=True, timeout=60
        )
    except subprocess.CalledProcessError as exc:
        raise DkimKeyError(f"openssl {args[0]} failed: {exc.stderr.decode().strip()}") from exc
    return done.stdout
