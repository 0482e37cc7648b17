"""The exceptions inbound-mail raises, all under one root.

Every error the library raises on purpose derives from :class:`InboundMailError`,
so a caller can catch one class.  Third-party errors (imaplib, sqlite3, httpx,
OSError) are translated where they enter the library, with the original kept as
``__cause__`` (``raise StoreError(...) from exc``).

The tree::

    InboundMailError
    ├── ConfigError            a config file, key or value is wrong; names all three
    ├── CredentialError        a secret cannot be read (missing file, loose mode, unset env var)
    ├── StoreError             the SQLite database cannot be opened, migrated or written
    │   └── StoreLockedError   another process holds the database's daemon lock
    ├── SourceError            a local mail export (mbox, Maildir, .eml) cannot be read
    ├── DnsTemporaryError      a DNS lookup timed out or failed (SERVFAIL): try the email later
    ├── OAuthError             the OAuth2 token endpoint failed (HTML, 5xx, timeout): retry later
    │   └── AuthorizationExpiredError  the grant is revoked or expired: run `inbound-mail auth`
    ├── ImapError              an IMAP account failed; ``account`` names it
    │   ├── ImapAuthError      the server refused the credentials (retrying will not help)
    │   ├── ImapTlsError       TLS failed: untrusted certificate, STARTTLS missing, ...
    │   └── ImapConnectionError  the network or server went away (retry with backoff)
    └── DeliveryError          a sink could not deliver one record
        ├── TemporaryDeliveryError  try again later (``retry_after`` may say when)
        └── PermanentDeliveryError  retrying will never help; the delivery goes dead

A malformed email is *not* an exception: the parser returns a
:class:`~inbound_mail.models.Rejected` value and the store keeps it in ``rejects``.
"""

from __future__ import annotations

__all__ = [
    "AuthorizationExpiredError",
    "ConfigError",
    "CredentialError",
    "DeliveryError",
    "DnsTemporaryError",
    "ImapAuthError",
    "ImapConnectionError",
    "ImapError",
    "ImapTlsError",
    "InboundMailError",
    "OAuthError",
    "PermanentDeliveryError",
    "SourceError",
    "StoreError",
    "StoreLockedError",
    "TemporaryDeliveryError",
]


class InboundMailError(Exception):
    """The root of every error inbound-mail raises on purpose."""


class ConfigError(InboundMailError):
    """A configuration problem, located as precisely as possible.

    ``str()`` reads ``FILE: KEY: PROBLEM`` so that the operator knows what to fix.
    """

    def __init__(self, problem: str, *, file: str | None = None, key: str | None = None) -> None:
        self.problem = problem
        self.file = file
        self.key = key
        where = ": ".join(part for part in (file, key) if part)
        super().__init__(f"{where}: {problem}" if where else problem)


class CredentialError(InboundMailError):
    """A secret could not be read, or is stored unsafely."""


class StoreError(InboundMailError):
    """The database cannot be opened, migrated or written."""


class StoreLockedError(StoreError):
    """Another inbound-mail daemon already runs on this database."""


class SourceError(InboundMailError):
    """A local mail export cannot be read at all (one bad email is a rejection instead)."""


class DnsTemporaryError(InboundMailError):
    """A DNS lookup timed out or the servers failed (SERVFAIL): not an answer about the
    name, so an email whose DKIM key it was looking up waits for a later pass."""


class OAuthError(InboundMailError):
    """Getting an OAuth2 access token failed; ``account`` names the account.  Its
    message never holds a token or a client secret."""

    def __init__(self, message: str, *, account: str | None = None) -> None:
        self.account = account
        self.reason = message
        super().__init__(f"account {account!r}: {message}" if account else message)


class AuthorizationExpiredError(OAuthError):
    """The provider refused the refresh token or the client (``invalid_grant``,
    ``invalid_client``): only a new authorisation (``inbound-mail auth NAME``) helps."""


class ImapError(InboundMailError):
    """An IMAP account failed.  ``account`` names the account from the config."""

    def __init__(self, message: str, *, account: str | None = None) -> None:
        self.account = account
        self.reason = message
        """The message without the account's name, for lines that already name it."""
        super().__init__(f"account {account!r}: {message}" if account else message)


class ImapAuthError(ImapError):
    """The server refused the login; check the username and password."""


class ImapTlsError(ImapError):
    """TLS could not be established or the certificate is not trusted."""


class ImapConnectionError(ImapError):
    """The connection failed or died; the worker retries with backoff."""


class DeliveryError(InboundMailError):
    """A sink could not deliver a record."""


class TemporaryDeliveryError(DeliveryError):
    """Delivery failed in a way that may pass: retry, no earlier than ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class PermanentDeliveryError(DeliveryError):
    """Delivery failed in a way that retrying cannot fix (a 4xx, a bad command exit)."""
