"""Shared fixtures: real servers, started once where they can be shared.

- ``dovecot``: one private Dovecot for the whole session.  Do not stop or kill it;
  use ``fresh_dovecot`` for that.
- ``mailbox``: a new user on that server for one test (isolation without a restart).
- ``fresh_dovecot``: a factory of servers owned by one test (stopped after it), for
  tests that kill, restart or reconfigure the server.
- ``redis_server`` / ``nats_server``: one private redis-server and one
  ``nats-server -js`` for the session (the redis and nats sinks' tests).

Waiting for something is ``inbound_mail.testing.wait.wait_until`` (never a bare sleep).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from inbound_mail.testing.dovecot import DovecotFactory, DovecotServer
from inbound_mail.testing.mailbox import Mailbox
from inbound_mail.testing.nats_server import NatsServer
from inbound_mail.testing.redis_server import RedisServer


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
