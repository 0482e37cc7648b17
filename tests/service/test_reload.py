"""SIGHUP: a valid config replaces the workers in the same process; an invalid one is refused."""

from __future__ import annotations

import signal
import uuid
from functools import partial
from pathlib import Path
from typing import Any

from testsupport.dovecot import DovecotServer
from testsupport.mailbox import Mailbox

from helpers import DaemonProcess, NotifyListener, count, provider_email, wait_until, write_config

FAST: dict[str, Any] = {"idle_deadline": 5.0, "connect_timeout": 5.0}


sms = partial(provider_email, word="sms")


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_valid_config_replaces_accounts_sinks_and_log_level_live(
    mailbox: Mailbox, dovecot: DovecotServer, tmp_path: Path
) -> None:
    db, first, second = tmp_path / "sms.db", tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    other = dovecot.new_mailbox("reload-added")
    one = mailbox.account(name="one", **FAST)
    two = other.account(name="two", **FAST)
    sink1 = {"name": "first", "type": "jsonl", "path": str(first)}
    sink2 = {"name": "second", "type": "jsonl", "path": str(second)}
    config = write_config(tmp_path / "c.toml", [one], db=db, sinks=[sink1])
    listener = NotifyListener(f"@inbound-mail-reload-{uuid.uuid4().hex}")
    daemon = DaemonProcess(config, env=listener.env())
    try:
        listener.wait_for(lambda m: m.get("READY") == "1")
        mailbox.append(sms(1))
        wait_until(lambda: lines(first) == 1, 10)
        write_config(
            config, [one, two], db=db, sinks=[sink1, sink2], extra='[log]\nlevel = "WARNING"\n'
        )
        daemon.signal(signal.SIGHUP)
        listener.wait_for(lambda m: m.get("RELOADING") == "1")
        listener.wait_for(lambda m: m.get("READY") == "1")
        daemon.wait_log("daemon.reloaded accounts=2 sinks=2")
        mailbox.append(sms(2))
        other.append(sms(3))
        wait_until(lambda: lines(second) == 2 and lines(first) == 3, 15)
        assert daemon.proc.poll() is None, "the same process serves on"
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
    finally:
        daemon.close()
        listener.close()
    assert count(db) == 3
    after = daemon.log.split("daemon.reloaded", 1)[1]
    assert "sms.stored" in daemon.log.split("daemon.reloaded", 1)[0]
    assert "sms.stored" not in after and " INFO " not in after, "the new level (WARNING) applies"


def test_an_invalid_config_keeps_the_old_one_and_still_reopens_files(
    mailbox: Mailbox, tmp_path: Path
) -> None:
    db, out = tmp_path / "sms.db", tmp_path / "out.jsonl"
    account = mailbox.account(name="main", **FAST)
    sink = {"name": "file", "type": "jsonl", "path": str(out)}
    config = write_config(tmp_path / "c.toml", [account], db=db, sinks=[sink])
    good = config.read_text()
    daemon = DaemonProcess(config)
    try:
        daemon.wait_log("state=idle")
        mailbox.append(sms(1))
        wait_until(lambda: lines(out) == 1, 10)
        out.rename(tmp_path / "out.jsonl.1")  # logrotate's move, then its SIGHUP
        bad_configs = [
            (good + "\n[[sinks]\n", "not valid TOML"),
            (
                good.replace('type = "jsonl"', 'type = "carrier-pigeon"'),
                "sinks[0].type: unknown sink type",
            ),
            (
                good.replace("password_file", 'password_env = "INBOUND_TEST_UNSET"\n#'),
                "environment variable INBOUND_TEST_UNSET (password_env) is not set",
            ),
        ]
        for n, (text, reason) in enumerate(bad_configs, start=1):
            config.write_text(text)
            daemon.signal(signal.SIGHUP)
            daemon.wait_log("daemon.reload_failed", occurrences=n)
            failed = [line for line in daemon.log.splitlines() if "daemon.reload_failed" in line]
            assert reason in failed[-1] and str(config) in failed[0], failed[-1]
        mailbox.append(sms(2))
        wait_until(lambda: lines(out) == 1, 10)  # the old config delivers, to the reopened file
        assert daemon.log.count("daemon.reopened_files") == 3
        assert "daemon.reloaded" not in daemon.log
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
    finally:
        daemon.close()
    assert count(db) == 2
