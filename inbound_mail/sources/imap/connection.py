"""Opening an authenticated IMAP connection: TLS, TCP keepalive, login.

This is where :mod:`ssl`, :mod:`socket`, :mod:`imaplib` and imapclient errors
enter the library.  One table, :data:`TRANSLATION`, applied by :func:`imap_errors`
while connecting (``phase="connect"``: :func:`connect`, ``check``) and in session
(``phase="session"``: the worker, backfill, ``check``), turns them into the
``ImapError`` tree, each naming the account and telling what to do:

- :class:`~inbound_mail.errors.ImapAuthError`: the server refused the login
  (retrying will not help);
- :class:`~inbound_mail.errors.ImapTlsError`: the certificate is not trusted,
  the handshake failed, or a ``starttls`` server does not offer STARTTLS;
- :class:`~inbound_mail.errors.ImapConnectionError`: refused, unreachable,
  timed out or dropped (retry with backoff).

TLS always verifies the certificate and the host name, against ``ca_file`` or
the system's trust store; nothing here ever falls back to an unverified or
clear-text connection on its own.
"""

from __future__ import annotations

import ast
import imaplib
import logging
import re
import socket
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Literal

import imapclient
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from ...config.model import AccountConfig
from ...errors import (
    ImapAuthError,
    ImapConnectionError,
    ImapError,
    ImapTlsError,
    InboundMailError,
)
from ...logs import log_event
from ...tls import certificate_refused, client_context, names_in_certificate

__all__ = [
    "TRANSLATION",
    "ErrorRule",
    "Phase",
    "capabilities",
    "certificate_names",
    "connect",
    "imap_errors",
    "login",
    "oauth_login",
    "open_session",
    "server_text",
    "tls_context",
    "translate",
    "untrusted_certificate",
]

_log = logging.getLogger("inbound_mail.imap.connection")  # a log field: kept

# Probe an idle connection after 60 s and give up after 3 unanswered probes 10 s
# apart, so a silently dropped connection dies in about 90 s, not in hours.
_KEEPALIVE_OPTIONS = (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3))
# A refused login with one of these codes is the server's trouble, not the password's.
_TEMPORARY_LOGIN_CODES = ("[UNAVAILABLE]", "[SERVERBUG]", "[INUSE]")


def connect(
    account: AccountConfig, password: str, *, log: logging.Logger | None = None
) -> IMAPClient:
    """A logged-in :class:`IMAPClient` for ``account``, over the TLS mode it asks for.

    ``tls = "implicit"`` speaks TLS from the first byte; ``"starttls"`` upgrades
    a plain connection and fails closed if the server does not offer it;
    ``"none"`` logs a warning, since the password then crosses the network in
    clear text.
    """
    client = open_session(account, log=log)
    login(client, account, password)
    return client


def open_session(account: AccountConfig, *, log: logging.Logger | None = None) -> IMAPClient:
    """The first half of :func:`connect`: connected, TLS established (``starttls``
    included), not logged in yet."""
    context = None if account.tls == "none" else tls_context(account)
    with imap_errors(account, "connect"):
        return _open(account, context, log or _log)


def login(client: IMAPClient, account: AccountConfig, password: str) -> None:
    """The second half of :func:`connect`; closes ``client`` if the login fails."""
    try:
        with imap_errors(account, "connect"):
            client.login(account.username, password)
    except BaseException:
        _close(client)
        raise


def oauth_login(client: IMAPClient, account: AccountConfig, mechanism: str, token: str) -> None:
    """SASL ``mechanism`` (``"OAUTHBEARER"`` or ``"XOAUTH2"``) with an access token; closes
    ``client`` if the login fails.  A refusal says what to check for OAuth2, not the password."""
    try:
        with imap_errors(account, "connect"):
            if mechanism == "OAUTHBEARER":
                client.oauthbearer_login(account.username, token)
            else:
                client.oauth2_login(account.username, token, mech=mechanism)
    except ImapAuthError as exc:
        _close(client)
        said = exc.reason.rpartition("(server said: ")[2].rstrip(")")
        raise ImapAuthError(
            f"{mechanism} login with an OAuth2 access token refused for user "
            f"{account.username} at {account.host}:{account.port}: check that username is "
            f"the mailbox the token is for, and its scope and mailbox permission (server "
            f"said: {said})",
            account=account.name,
        ) from exc
    except BaseException:
        _close(client)
        raise


def tls_context(account: AccountConfig) -> ssl.SSLContext:
    """A verifying client context: ``ca_file`` if set, else the system's trusted CAs."""
    try:
        return client_context(account.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ImapTlsError(
            f"cannot load ca_file {account.ca_file}: {exc}", account=account.name
        ) from exc


def capabilities(client: IMAPClient) -> frozenset[str]:
    """The server's capabilities, upper-case (``"IDLE"``, ``"MOVE"``, ``"AUTH=PLAIN"``)."""
    return frozenset(
        (cap.decode("ascii", "replace") if isinstance(cap, bytes) else str(cap)).upper()
        for cap in client.capabilities()
    )


# imaplib raises with the server's line as bytes, and imapclient wraps str() of that
# again: both leave Python literals such as b'[AUTHENTICATIONFAILED] ...' in the text.
_BYTES_LITERAL = re.compile(r"(?<!\w)b'(?:[^'\\]|\\.)*'" + "|" + r'(?<!\w)b"(?:[^"\\]|\\.)*"')


def server_text(exc: BaseException) -> str:
    """What an imaplib / imapclient error says, as plain text: the server's words
    decoded (never ``b'...'``), control characters replaced, so that it is safe to
    show on a terminal or in a log line."""
    parts: list[str] = []
    for arg in exc.args:
        if isinstance(arg, bytes | bytearray):
            text = bytes(arg).decode("utf-8", "replace")
        else:
            text = _BYTES_LITERAL.sub(_decoded_literal, str(arg))
        parts.append("".join(c if c.isprintable() else "?" for c in text).strip())
    return "; ".join(part for part in parts if part) or type(exc).__name__


def _decoded_literal(match: re.Match[str]) -> str:
    try:
        value = ast.literal_eval(match.group(0))  # a literal only: never evaluates code
    except (ValueError, SyntaxError):
        return match.group(0)
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else match.group(0)


def untrusted_certificate(exc: ssl.SSLCertVerificationError, account: AccountConfig) -> str:
    """Why the server's certificate was refused, and what fixes it."""
    return certificate_refused(
        exc,
        where=f"{account.host}:{account.port}",
        host=account.host,
        names=lambda: certificate_names(account),
        host_setting=account.key("host"),
        ca_setting=account.key("ca_file"),
    )


def certificate_names(account: AccountConfig) -> list[str]:
    """The names (``DNS:mail.example.com``, ``IP:192.0.2.1``) on the server's
    certificate, read over a second connection that still verifies the chain but
    not the host name; empty if that fails too.  Only for error messages."""
    context = tls_context(account)
    context.check_hostname = False  # verify_mode stays CERT_REQUIRED: the chain is checked
    try:
        client = _open(account, context, _log)
    except Exception:  # only a hint is lost
        return []
    try:
        cert = client.socket().getpeercert() or {}
    except (OSError, ValueError):
        cert = {}
    finally:
        _close(client)
    return names_in_certificate(cert)


def _open(
    account: AccountConfig, context: ssl.SSLContext | None, log: logging.Logger
) -> IMAPClient:
    implicit = account.tls == "implicit"
    client = IMAPClient(
        account.host,
        account.port,
        ssl=implicit,
        ssl_context=context if implicit else None,
        timeout=account.connect_timeout,
    )
    try:
        _enable_keepalive(client.socket())
        # imapclient writes a command and its CRLF separately: without NODELAY the
        # CRLF waits for Nagle and the server's delayed ACK (~40 ms a command on Cyrus).
        client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if account.tls == "starttls":
            _starttls(client, account, context)
        elif account.tls == "none":
            log_event(
                log,
                logging.WARNING,
                "imap.cleartext",
                account=account.name,
                server=f"{account.host}:{account.port}",
                risk='tls = "none": the password crosses the network in clear text',
            )
    except BaseException:
        _close(client)
        raise
    return client


def _starttls(client: IMAPClient, account: AccountConfig, context: ssl.SSLContext | None) -> None:
    if "STARTTLS" not in capabilities(client):
        # Fail closed: an attacker on the path can strip STARTTLS from the greeting.
        raise ImapTlsError(
            f'{account.host}:{account.port} does not offer STARTTLS, and tls = "starttls" '
            "refuses to log in without TLS; use the server's implicit-TLS port "
            '(tls = "implicit", usually 993) or fix the server',
            account=account.name,
        )
    client.starttls(context)


def _enable_keepalive(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in _KEEPALIVE_OPTIONS:
        option = getattr(socket, name, None)  # Linux has all three; others vary
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


Phase = Literal["connect", "session"]
"""``connect``: opening, TLS and login (nothing is known to work yet); ``session``: after
login (it worked, so a failure means the connection or a command was lost)."""


@dataclass(frozen=True)
class ErrorRule:
    """One row of :data:`TRANSLATION`: in ``phase``, an exception of a type in ``catches``
    (and for which ``when`` holds) becomes ``error`` with the text ``says``.

    ``says`` is a template with the fields ``{where}`` (host:port), ``{user}``,
    ``{timeout}`` (connect_timeout) and ``{said}`` (what the exception says, decoded
    by :func:`server_text`), or a function of the exception and the account."""

    phase: Phase
    catches: tuple[type[BaseException], ...]
    error: type[ImapError]
    says: str | Callable[[Any, AccountConfig], str]
    when: Callable[[BaseException], bool] = lambda exc: True


def _temporary_login(exc: BaseException) -> bool:
    return any(code in server_text(exc) for code in _TEMPORARY_LOGIN_CODES)


# First matching row wins: a subclass (SSLCertVerificationError, TimeoutError, LoginError,
# IMAP4.abort) comes before its base (SSLError, OSError, IMAP4.error).
TRANSLATION: tuple[ErrorRule, ...] = (
    ErrorRule("connect", (ssl.SSLCertVerificationError,), ImapTlsError, untrusted_certificate),
    ErrorRule("connect", (ssl.SSLError,), ImapTlsError, "TLS with {where} failed: {said}"),
    ErrorRule(
        "connect",
        (LoginError,),
        ImapConnectionError,
        "{where} cannot log in user {user} right now: {said}",
        when=_temporary_login,
    ),
    ErrorRule(
        "connect",
        (LoginError,),
        ImapAuthError,
        "login refused for user {user} at {where}; check username and password "
        "(server said: {said})",
    ),
    ErrorRule(
        "connect",
        (TimeoutError,),
        ImapConnectionError,
        "cannot connect to {where}: timed out after {timeout:g} s",
    ),
    ErrorRule(
        "connect",
        (OSError, imaplib.IMAP4.abort),
        ImapConnectionError,
        "cannot connect to {where}: {said}",
    ),
    ErrorRule(
        "connect", (imaplib.IMAP4.error,), ImapError, "unexpected answer from {where}: {said}"
    ),
    ErrorRule("session", (imaplib.IMAP4.abort,), ImapConnectionError, "connection lost: {said}"),
    ErrorRule("session", (imaplib.IMAP4.error,), ImapError, "the server refused a command: {said}"),
    ErrorRule("session", (OSError,), ImapConnectionError, "connection lost: {said}"),
)


@contextmanager
def imap_errors(account: AccountConfig, phase: Phase = "session") -> Iterator[None]:
    """Translate what :mod:`ssl`, :mod:`socket`, :mod:`imaplib` and imapclient raise into
    the ``ImapError`` tree, by the first row of :data:`TRANSLATION` for ``phase`` that
    matches; the library's own errors pass unchanged, anything else propagates as is."""
    try:
        yield
    except InboundMailError:
        raise
    except Exception as exc:
        translated = translate(exc, account, phase)
        if translated is None:
            raise
        raise translated from exc


def translate(exc: BaseException, account: AccountConfig, phase: Phase) -> ImapError | None:
    """``exc`` as the ``ImapError`` the table gives it, or None when no row matches."""
    for rule in TRANSLATION:
        if rule.phase == phase and isinstance(exc, rule.catches) and rule.when(exc):
            if callable(rule.says):
                text = rule.says(exc, account)
            else:
                text = rule.says.format(
                    where=f"{account.host}:{account.port}",
                    user=account.username,
                    timeout=account.connect_timeout,
                    said=_said(exc),
                )
            return rule.error(text, account=account.name)
    return None


def _said(exc: BaseException) -> str:
    if isinstance(exc, imaplib.IMAP4.error):
        return server_text(exc)
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _close(client: IMAPClient) -> None:
    with suppress(OSError, imaplib.IMAP4.error, imapclient.exceptions.IMAPClientError):
        client.shutdown()
