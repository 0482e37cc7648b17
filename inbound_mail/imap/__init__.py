"""The IMAP source: connection (TLS, login), sync (search, fetch, acknowledge) and
the per-account worker that runs the IDLE or polling loop."""

from __future__ import annotations

from .connection import capabilities, connect, has_idle, has_move, tls_context

__all__ = ["capabilities", "connect", "has_idle", "has_move", "tls_context"]
