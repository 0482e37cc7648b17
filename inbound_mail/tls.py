"""The one way this package builds a TLS client context (IMAP, webhook, redis, nats,
``check``): certificates and host names verified, against ``ca_file`` when one is
configured, else the system's trusted CAs."""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["client_context"]


def client_context(ca_file: str | Path | None = None) -> ssl.SSLContext:
    """A verifying client context.  Raises ``OSError`` or ``ssl.SSLError`` when
    ``ca_file`` cannot be read as PEM: the caller says which key to fix."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
