"""Event-stream sinks and ``kill -9``: the daemon killed after the server accepted a
batch (XADD done, PubAck received) but before the outbox rows were marked
delivered.  The restarted daemon sends the batch again; the engine drops the resend
by SMS id (Redis: the marker key; JetStream: ``Nats-Msg-Id``), so each SMS is in the
stream once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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

from inbound_mail.models import EmailOrigin, SmsRecord
from inbound_mail.store.db import Store
from inbound_mail.store.rows import IngestItem
from inbound_mail.testing.wait import wait_until
from testsupport.mailbox import Mailbox
from testsupport.nats_server import NatsServer
from testsupport.redis_server import RedisServer

from helpers import DaemonProcess, rows, write_config

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


# A delivery pass in a process of its own, to be killed: one sink, from a JSON spec.
DELIVER = """
import json, logging, sys
from pathlib import Path
from inbound_mail.config.model import SinkConfig
from inbound_mail.delivery import deliver_due
from inbound_mail.logs import KeyValueFormatter
handler = logging.StreamHandler()
handler.setFormatter(KeyValueFormatter())
logging.basicConfig(level=logging.INFO, handlers=[handler])
spec = json.loads(sys.argv[1])
config = SinkConfig(name=spec["name"], type=spec["type"], options=spec["options"],
                    parallel=spec["parallel"])
result = deliver_due(Path(spec["db"]), [config])[spec["name"]]
print(json.dumps({"delivered": result.delivered, "failed": result.failed}))
"""


@pytest.mark.parametrize("kind", ["redis", "nats"])
@pytest.mark.parametrize("parallel", [1, 8])
def test_kill_with_a_batch_of_completions_not_yet_recorded(
    kind: str, parallel: int, redis_server: RedisServer, nats_server: NatsServer, tmp_path: Path
) -> None:
    """Many deliveries accepted by the server, none recorded: after kill -9 every one
    is sent again with its SMS id, and the server keeps each SMS once."""
    tag = unique_stream()
    options: dict[str, Any]
    if kind == "redis":
        stream = f"sms-{tag}"
        options = {"url": redis_server.url, "stream": stream,
                   "password_file": str(redis_server.password_file)}  # fmt: skip

        def stream_ids() -> list[str]:
            return [fields["id"] for _e, fields in redis_server.entries(stream)]
    else:
        stream, subject = f"SMS_{tag}", f"sms.{tag}"
        nats_server.create_stream(stream, [subject], duplicate_window=3600)
        options = {"url": nats_server.url, "stream": stream, "subject": subject,
                   "user": nats_server.user,
                   "password_file": str(nats_server.password_file)}  # fmt: skip

        def stream_ids() -> list[str]:
            return [m.headers["Nats-Msg-Id"] for m in nats_server.messages(stream)]

    db = tmp_path / "sms.db"
    count = 300
    expected = queue_sms(db, kind, count, tag)
    spec = json.dumps(
        {"db": str(db), "name": kind, "type": kind, "options": options, "parallel": parallel}
    )
    argv = [sys.executable, "-c", DELIVER, spec]
    env = {**os.environ, "INBOUND_MAIL_FAULT": "after-sink-2xx:1"}
    killed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    accepted = stream_ids()
    assert len(accepted) > 1, "the server had accepted several deliveries when it died"
    assert len(set(accepted)) == len(accepted)
    assert not delivered(db, kind, count) and outcomes(db, kind) == {"pending": count}

    again = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"delivered": count, "failed": 0}
    assert delivered(db, kind, count)
    ids = stream_ids()
    assert sorted(ids) == sorted(expected), "each SMS in the stream once: none lost, none twice"
    resends = again.stderr.count(DUPLICATE[kind])
    assert resends == len(accepted), "exactly the unrecorded ones were sent again"


def queue_sms(db: Path, sink: str, count: int, tag: str) -> list[str]:
    """``count`` SMS stored and queued for ``sink``; their ids."""
    records = [
        SmsRecord(
            originator=f"+39347{n:07d}",
            destination="+393331234333",
            date_time="20240501120000",
            received_at="2024-05-01T10:00:00Z",
            text=f"batch {tag} {n}",
        )
        for n in range(count)
    ]
    items = [
        IngestItem(b"raw", r, EmailOrigin("eml", path=f"/x/{n}.eml")) for n, r in enumerate(records)
    ]
    with Store.open(db) as store:
        store.ingest(items, route=lambda _r: [sink])
    return [r.id for r in records]


def outcomes(db: Path, sink: str) -> dict[str, int]:
    found = rows(
        db, "SELECT status, count(*) FROM deliveries WHERE sink = ? GROUP BY status", (sink,)
    )
    return {status: n for status, n in found}
