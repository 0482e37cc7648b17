"""Scale-out: two daemons, each with its own mailbox and SQLite, publishing into one
Redis stream and one JetStream stream.  The provider sends one SMS to both mailboxes;
each stream holds it once (the SMS id is the same, the engine's dedup drops the
second)."""

from __future__ import annotations

import signal
from pathlib import Path

from stream_daemons import (
    FAST_ACCOUNT,
    delivered,
    nats_sink,
    redis_sink,
    sms_email,
    unique_stream,
)

from inbound_mail.testing.wait import wait_until
from testsupport.dovecot import DovecotServer
from testsupport.mailbox import Mailbox
from testsupport.nats_server import NatsServer
from testsupport.redis_server import RedisServer

from helpers import DaemonProcess, write_config


def test_two_daemons_on_two_mailboxes_put_each_sms_in_the_stream_once(
    dovecot: DovecotServer,
    mailbox: Mailbox,
    redis_server: RedisServer,
    nats_server: NatsServer,
    tmp_path: Path,
) -> None:
    other = dovecot.new_mailbox("scale-out-b")
    tag = unique_stream()
    redis_stream, nats_stream, subject = f"sms-{tag}", f"SMS_{tag}", f"sms.{tag}"
    nats_server.create_stream(nats_stream, [subject], duplicate_window=3600)
    sinks = [redis_sink(redis_server, redis_stream), nats_sink(nats_server, nats_stream, subject)]

    expected: set[str] = set()
    for n in range(3):  # the same SMS reaches both mailboxes, under two Message-IDs
        for box in (mailbox, other):
            sms_id, raw = sms_email(n, tag)
            box.append(raw)
            expected.add(sms_id)
    for n, box in ((10, mailbox), (11, other)):  # and one SMS reaches only one of them
        sms_id, raw = sms_email(n, tag)
        box.append(raw)
        expected.add(sms_id)

    daemons: list[DaemonProcess] = []
    dbs = [tmp_path / "a.db", tmp_path / "b.db"]
    try:
        for db, box in zip(dbs, (mailbox, other), strict=True):
            config = write_config(
                db.with_suffix(".toml"), [box.account(**FAST_ACCOUNT)], db=db, sinks=sinks
            )
            daemons.append(DaemonProcess(config))
        wait_until(
            lambda: (
                all(delivered(db, sink, 4) for db in dbs for sink in ("redis", "nats"))
                or any(d.proc.poll() is not None for d in daemons)
            ),
            120,
            message="both daemons delivered their 4 SMS to both sinks",
        )
        for daemon in daemons:
            assert daemon.proc.poll() is None, daemon.log
        redis_ids = [fields["id"] for _e, fields in redis_server.entries(redis_stream)]
        nats_ids = [m.headers["Nats-Msg-Id"] for m in nats_server.messages(nats_stream)]
        assert sorted(redis_ids) == sorted(expected), "one Redis entry per SMS"
        assert sorted(nats_ids) == sorted(expected), "one JetStream message per SMS"
        logs = "".join(d.log for d in daemons)
        assert "duplicate of entry" in logs, "Redis dropped the second daemon's copy"
        assert "duplicate: dropped by the stream" in logs, "JetStream dropped it too"
        for daemon in daemons:
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(30) == 0, daemon.log
    finally:
        for daemon in daemons:
            daemon.close()
