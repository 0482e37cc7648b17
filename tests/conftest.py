"""Shared fixtures: real servers, started once where they can be shared.

- ``dovecot``: one private Dovecot for the whole session.  Do not stop or kill it;
  use ``fresh_dovecot`` for that.
- ``cyrus_debian``, ``cyrus_upstream``: one private Cyrus IMAP for the session in each
  namespace layout (``INBOX.Sub`` and ``Sub``); likewise never stopped by a test.
- ``imap_server``: the server of ``mailbox``: the shared Dovecot, or each of the three
  for a test marked ``@ON_EVERY_SERVER`` (``helpers.py``): the IMAP contract tests.
- ``mailbox``: a new user on that server for one test (isolation without a restart).
- ``fresh_dovecot``: a factory of servers owned by one test (stopped after it), for
  tests that kill, restart or reconfigure the server.
- ``redis_server`` / ``nats_server``: one private redis-server and one
  ``nats-server -js`` for the session (the redis and nats sinks' tests).

Waiting for something is ``inbound_mail.testing.wait.wait_until`` (never a bare sleep).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from inbound_mail.store.db import Store
from testsupport.cyrus import CyrusFactory, CyrusServer
from testsupport.dkim import DkimKey
from testsupport.dns import DnsServer
from testsupport.dovecot import DovecotFactory, DovecotServer
from testsupport.mailbox import Mailbox, MailServer
from testsupport.nats_server import NatsServer
from testsupport.oauth_server import OAuthServer
from testsupport.redis_server import RedisServer

# The ids of ``imap_server``'s parameters, and the session fixture of each.
_SERVER_FIXTURES = {
    "dovecot": "dovecot",
    "cyrus-debian": "cyrus_debian",
    "cyrus-upstream": "cyrus_upstream",
}


@pytest.fixture(scope="session")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DovecotServer]:
    """The session's shared Dovecot (IDLE on, default user ``sms``/``secret``)."""
    with DovecotServer(tmp_path_factory.mktemp("dovecot")) as server:
        yield server


@pytest.fixture(scope="session")
def cyrus_debian(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CyrusServer]:
    """The session's Cyrus in Debian's layout: folders are ``INBOX.Sub``."""
    with CyrusServer(tmp_path_factory.mktemp("cyrus-debian"), layout="debian") as server:
        yield server


@pytest.fixture(scope="session")
def cyrus_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CyrusServer]:
    """The session's Cyrus in upstream's layout: folders are ``Sub``, beside INBOX."""
    with CyrusServer(tmp_path_factory.mktemp("cyrus-upstream"), layout="upstream") as server:
        yield server


@pytest.fixture
def imap_server(request: pytest.FixtureRequest) -> MailServer:
    """The shared server ``mailbox`` lives on: Dovecot unless parametrized (indirectly)
    with ``"cyrus-debian"`` or ``"cyrus-upstream"``."""
    name = getattr(request, "param", "dovecot")
    server: MailServer = request.getfixturevalue(_SERVER_FIXTURES[name])
    return server


@pytest.fixture
def mailbox(imap_server: MailServer, request: pytest.FixtureRequest) -> Mailbox:
    """A user of its own on the shared server, named after the test for readable logs."""
    imap_server.start()  # a no-op, unless an earlier test broke the rule and stopped it
    prefix = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    return imap_server.new_mailbox(prefix or "user")


_Server = TypeVar("_Server", DovecotServer, CyrusServer)


def _fresh_servers(
    tmp_path_factory: pytest.TempPathFactory, server_class: type[_Server], name: str
) -> Iterator[Callable[..., _Server]]:
    """A factory of servers of one test's own, each closed when the test ends."""
    servers: list[_Server] = []

    def start(**options: Any) -> _Server:
        server = server_class(tmp_path_factory.mktemp(name), **options)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def fresh_dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DovecotFactory]:
    """Start a server of this test's own: ``fresh_dovecot(idle=False, extra_conf=...)``."""
    yield from _fresh_servers(tmp_path_factory, DovecotServer, "fresh-dovecot")


@pytest.fixture
def fresh_cyrus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CyrusFactory]:
    """Start a Cyrus of this test's own: ``fresh_cyrus(layout="upstream", idle=False)``."""
    yield from _fresh_servers(tmp_path_factory, CyrusServer, "fresh-cyrus")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The session's shared redis-server (password ``secret``).  Use a stream name of
    your own; start a ``RedisServer`` of the test's own to restart or kill one."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """The session's shared ``nats-server -js`` (user ``sms``/``secret``).  Create a
    stream of your own; start a ``NatsServer`` of the test's own to restart one."""
    with NatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield server


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


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """An empty store's path (``test_cli`` has its own ``db``: a path not created yet)."""
    path = tmp_path / "inbound.db"
    Store.open(path).close()
    return path
