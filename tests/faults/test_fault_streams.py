"""Event-stream sinks and ``kill -9``: the daemon killed after the server accepted a
batch (XADD done, PubAck received) but before the outbox rows were marked
delivered.  The restarted daemon sends the batch again; the engine drops the resend
by SMS id (Redis: the marker key; JetStream: ``Nats-Msg-Id``), so each SMS is in the
stream once."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from stream_daemons import (
    FAST_ACCOUNT,
    delivered,
    nats_sink,
    redis_sink,
    sms_email,
    unique_stream,
)

from inbound_mail.testing.mailbox import Mailbox
from inbound_mail.testing.nats_server import NatsServer
from inbound_mail.testing.redis_server import RedisServer
from inbound_mail.testing.wait import wait_until

from helpers import DaemonProcess, write_config

pytestmark = pytest.mark.faults

DUPLICATE = {"redis": "duplicate of entry", "nats": "duplicate: dropped by the stream"}


@pytest.mark.parametrize("kind", ["redis", "nats"])
@pytest.mark.parametrize("parallel", [1, 4])
def test_kill_after_the_server_accepted_before_marked(
    kind: str,
    parallel: int,
    mailbox: Mailbox,
    redis_server: RedisServer,
    nats_server: NatsServer,
    tmp_path: Path,
) -> None:
    tag = unique_stream()
    sink: dict[str, Any]
    if kind == "redis":
        stream = f"sms-{tag}"
        sink = redis_sink(redis_server, stream, parallel=parallel)

        def stream_ids() -> list[str]:
            return [fields["id"] for _e, fields in redis_server.entries(stream)]
    else:
        stream, subject = f"SMS_{tag}", f"sms.{tag}"
        nats_server.create_stream(stream, [subject], duplicate_window=3600)
        sink = nats_sink(nats_server, stream, subject, parallel=parallel)

        def stream_ids() -> list[str]:
            return [m.headers["Nats-Msg-Id"] for m in nats_server.messages(stream)]

    db = tmp_path / "sms.db"
    config = write_config(
        tmp_path / "inbound-mail.toml", [mailbox.account(**FAST_ACCOUNT)], db=db, sinks=[sink]
    )
    expected = set()
    for n in range(5):
        sms_id, raw = sms_email(n, tag)
        mailbox.append(raw)
        expected.add(sms_id)

    killed = DaemonProcess(config, env={"INBOUND_MAIL_FAULT": "after-sink-2xx:1"})
    try:
        assert killed.wait(60) == -signal.SIGKILL, killed.log
    finally:
        killed.close()
    accepted = stream_ids()
    assert accepted, "the fault fires after the server accepted a batch"
    assert not delivered(db, kind, 5), "...and before the outbox knew"

    daemon = DaemonProcess(config)
    try:
        wait_until(
            lambda: delivered(db, kind, 5) or daemon.proc.poll() is not None,
            60,
            message="every SMS delivered after the restart",
        )
        assert delivered(db, kind, 5), daemon.log
        ids = stream_ids()
        assert sorted(ids) == sorted(expected), "each SMS in the stream once"
        assert DUPLICATE[kind] in daemon.log, "the resend reached the server and was dropped"
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.log
    finally:
        daemon.close()
