"""Shared fixtures: real servers, started once where they can be shared.

- ``dovecot``: one private Dovecot for the whole session.  Do not stop or kill it;
  use ``fresh_dovecot`` for that.
- ``mailbox``: a new user on that server for one test (isolation without a restart).
- ``fresh_dovecot``: a factory of servers owned by one test (stopped after it), for
  tests that kill, restart or reconfigure the server.

Waiting for something is ``inbound_mail.testing.wait.wait_until`` (never a bare sleep).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from inbound_mail.testing.dkim import DkimKey
from inbound_mail.testing.dns import DnsServer
from inbound_mail.testing.dovecot import DovecotFactory, DovecotServer
from inbound_mail.testing.mailbox import Mailbox
from inbound_mail.testing.oauth_server import OAuthServer


@pytest.fixture(scope="session")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DovecotServer]:
    """The session's shared Dovecot (IDLE on, default user ``sms``/``secret``)."""
    with DovecotServer(tmp_path_factory.mktemp("dovecot")) as server:
        yield server


@pytest.fixture
def mailbox(dovecot: DovecotServer, request: pytest.FixtureRequest) -> Mailbox:
    """A user of its own on the shared server, named after the test for readable logs."""
    dovecot.start()  # a no-op, unless an earlier test broke the rule and stopped it
    prefix = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    return dovecot.new_mailbox(prefix or "user")


@pytest.fixture
def fresh_dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DovecotFactory]:
    """Start a server of this test's own: ``fresh_dovecot(idle=False, extra_conf=...)``."""
    servers: list[DovecotServer] = []

    def start(**options: Any) -> DovecotServer:
        server = DovecotServer(tmp_path_factory.mktemp("fresh-dovecot"), **options)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.close()


# -- trust (issue 10): a real DNS server and a real DKIM key ------------------------------------


@pytest.fixture(scope="session")
def dns_server() -> Iterator[DnsServer]:
    """A DNS server on 127.0.0.1 for the session; tests publish keys and break names."""
    with DnsServer() as server:
        yield server


@pytest.fixture(scope="session")
def dkim_key(dns_server: DnsServer) -> DkimKey:
    """The provider's test key (d=agiletelecom.com, s=test), published in ``dns_server``."""
    key = DkimKey.generate()
    key.publish(dns_server)
    return key


# -- OAuth2 sign-in (issue 13): a real authorisation server and a Dovecot that trusts it --------


@pytest.fixture(scope="session")
def _oauth_session(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[OAuthServer, DovecotServer]]:
    with OAuthServer() as auth:
        root = tmp_path_factory.mktemp("oauth-dovecot")
        with DovecotServer(root, oauth2_introspection=auth.introspection_url) as server:
            yield auth, server


@pytest.fixture
def oauth_server(_oauth_session: tuple[OAuthServer, DovecotServer]) -> Iterator[OAuthServer]:
    """The session's OAuth2 server, its faults and token lifetime reset after each test."""
    auth = _oauth_session[0]
    yield auth
    auth.token_fault = None
    auth.access_ttl = 3600
    auth.strict_rotation = False


@pytest.fixture
def oauth_dovecot(_oauth_session: tuple[OAuthServer, DovecotServer]) -> DovecotServer:
    """A Dovecot whose oauth2 passdb introspects tokens at ``oauth_server``."""
    return _oauth_session[1]
