"""Logging in to IMAP with an OAuth2 access token: SASL OAUTHBEARER or XOAUTH2.

Which mechanism: ``oauth2.sasl`` in the account's config, or with ``"auto"``
(the default) OAUTHBEARER when the server announces ``AUTH=OAUTHBEARER`` --
RFC 7628 is the standard, and its error answers are defined -- else XOAUTH2,
the mechanism Gmail and Microsoft 365 speak (Microsoft offers only XOAUTH2).
Both come from imapclient (``oauthbearer_login`` / ``oauth2_login``).

A refused token gets one more try with a freshly refreshed one: a token may be
revoked or expire early on the provider's side while it still looks valid here.
"""

from __future__ import annotations

import logging

from imapclient import IMAPClient

from ...config.model import AccountConfig
from ...errors import ImapAuthError
from ...oauth import TokenSource
from .connection import capabilities, oauth_login, open_session

__all__ = ["choose_mechanism", "connect_oauth"]

_log = logging.getLogger("inbound_mail.imap")


def choose_mechanism(account: AccountConfig, offered: frozenset[str]) -> str:
    """``"OAUTHBEARER"`` or ``"XOAUTH2"`` for ``account`` on a server offering ``offered``."""
    choice = account.oauth2.sasl if account.oauth2 is not None else "auto"
    if choice != "auto":
        return choice.upper()
    if "AUTH=OAUTHBEARER" in offered:
        return "OAUTHBEARER"
    return "XOAUTH2"  # announced or not: Microsoft and Gmail accept it


def connect_oauth(
    account: AccountConfig, tokens: TokenSource, *, log: logging.Logger | None = None
) -> IMAPClient:
    """A logged-in client; the token is refreshed and the login retried once if refused."""
    token = tokens.access_token()
    for attempt in (1, 2):
        client = open_session(account, log=log or _log)
        mechanism = choose_mechanism(account, capabilities(client))
        try:
            oauth_login(client, account, mechanism, token)
        except ImapAuthError:
            if attempt == 2:
                raise
            token = tokens.access_token(force=True)
            continue
        return client
    raise AssertionError("unreachable")
