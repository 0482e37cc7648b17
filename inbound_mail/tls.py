"""The one way this package builds a TLS client context (IMAP, webhook, redis, nats,
``check``): certificates and host names verified, against ``ca_file`` when one is
configured, else the system's trusted CAs; and the one wording of a refused certificate."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["certificate_refused", "client_context", "is_name_mismatch", "names_in_certificate"]


def client_context(ca_file: str | Path | None = None) -> ssl.SSLContext:
    """A verifying client context.  Raises ``OSError`` or ``ssl.SSLError`` when
    ``ca_file`` cannot be read as PEM: the caller says which key to fix."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)


# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH: the chain
# is trusted, the certificate is for other names -- which no ca_file can fix.
_NAME_MISMATCH = (62, 64)


def is_name_mismatch(exc: ssl.SSLCertVerificationError) -> bool:
    """The chain is trusted but the certificate is for other names (no CA fixes that)."""
    return exc.verify_code in _NAME_MISMATCH


def names_in_certificate(cert: Mapping[str, Any]) -> list[str]:
    """``DNS:...`` and ``IP:...`` from a ``getpeercert()`` dict (its CN if it has no SAN)."""
    names = [f"{'IP' if kind == 'IP Address' else kind}:{value}"
             for kind, value in cert.get("subjectAltName", ())]  # fmt: skip
    if not names:
        names = [f"CN={value}" for rdn in cert.get("subject", ()) for key, value in rdn
                 if key == "commonName"]  # fmt: skip
    return names


def certificate_refused(
    exc: ssl.SSLCertVerificationError,
    *,
    where: str,
    host: str,
    names: Callable[[], list[str]],
    host_setting: str,
    ca_setting: str,
    peer: str = "server",
) -> str:
    """Why the certificate of ``where`` was refused, and what fixes it: the one wording
    for every TLS client here (IMAP, ``check`` of a sink).  ``names`` reads the names the
    certificate holds; it is called only when they are what is wrong."""
    if is_name_mismatch(exc):
        held = ", ".join(names()) or "other hosts"
        return (
            f"certificate of {where} is not valid for {host}: it names {held}; use one of "
            f"its names in {host_setting}, or give the {peer} a certificate for {host}"
        )
    return (
        f"certificate of {where} not trusted ({exc.verify_message}): set {ca_setting} "
        f"to the CA that signed it, or fix the {peer}'s certificate"
    )
