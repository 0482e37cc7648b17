"""``inbound-mail status``: the daemon's heartbeat and the database, judged (Nagios exit codes)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner, Result

from inbound_mail.cli import cli
from inbound_mail.config.reader import load_config
from inbound_mail.models import EmailOrigin, SmsRecord
from inbound_mail.service.status import HEARTBEAT_KEY, collect_status
from inbound_mail.store.db import Store
from inbound_mail.store.rows import AttemptRecord, IngestItem
from inbound_mail.testing.emails import build_provider_email
from testsupport.mailbox import Mailbox

from helpers import in_process_daemon, wait_until, write_config

NUMBER = "+393331234333"


def status(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), "status", *args])


def test_a_running_daemon_is_ok_then_a_stopped_one_is_critical(
    mailbox: Mailbox, tmp_path: Path
) -> None:
    db = tmp_path / "sms.db"
    sink = {"name": "file", "type": "jsonl", "path": str(tmp_path / "out.jsonl")}
    extra = f'[status]\nheartbeat_stale = "2s"\n[status.expect_within]\n"{NUMBER}" = "1h"\n'
    account = mailbox.account(idle_deadline=5.0, connect_timeout=5.0)
    config = write_config(tmp_path / "c.toml", [account], db=db, sinks=[sink], extra=extra)
    with in_process_daemon(config):
        mailbox.append(build_provider_email("+393470000001", NUMBER, _now_rome(), "hello"))
        wait_until(lambda: _idle_and_ok(config), 15)
        result = status(config, "--json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["status"] == "OK" and report["problems"] == []
        assert report["accounts"][0]["state"] == "idle" and report["accounts"][0]["last_sync_at"]
        assert report["numbers"][0]["destination"] == NUMBER
        assert report["sinks"][0] == {**report["sinks"][0], "name": "file", "pending": 0, "dead": 0}
        assert report["sinks"][0]["attempts_last_hour"] == 1
        text = status(config).stdout
        assert text.startswith("OK: 1 accounts, 1 numbers, 1 sinks\n")
        assert f"account {account.name}: idle, last sync" in text
    result = status(config)  # at once: a clean stop is recorded, no heartbeat to go stale
    assert result.exit_code == 2, result.stdout
    assert result.stdout.startswith("CRITICAL: 1 problem\nCRITICAL daemon: daemon stopped at ")
    assert "systemctl start inbound-mail" in result.stdout
    assert "journalctl -u inbound-mail" in result.stdout
    assert "\ndaemon: stopped at " in result.stdout
    report = json.loads(status(config, "--json").stdout)
    assert report["daemon"]["stopped_at"] and report["exit_code"] == 2


def _idle_and_ok(config: Path) -> bool:
    result = status(config, "--json")
    report = json.loads(result.stdout)
    return result.exit_code == 0 and report["accounts"][0].get("state") == "idle"


def _now_rome() -> str:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    return datetime.now(ZoneInfo("Europe/Rome")).strftime("%Y%m%d%H%M%S")


def _database(tmp_path: Path, *, durations: list[float], failures: int, received_at: str) -> Path:
    """A config and a database holding one SMS, its attempts, and a fresh heartbeat."""
    db = tmp_path / "sms.db"
    extra = f'[status.expect_within]\n"{NUMBER}" = "1d"\n"+390000000001" = "1d"\n'
    config = write_config(
        tmp_path / "c.toml",
        db=db,
        extra=extra,
        sinks=[{"name": "crm", "type": "jsonl", "path": str(tmp_path / "o")}],
    )
    record = SmsRecord("+393470000001", NUMBER, "20240501120000", received_at, "hi")
    origin = EmailOrigin(kind="eml", path=str(tmp_path / "x.eml"))
    now = time.time()
    stored_at = datetime.fromisoformat(received_at.replace("Z", "+00:00")).timestamp()
    with Store.open(db, clock=lambda: stored_at) as store:  # stored when received
        store.ingest([IngestItem(b"raw", record, origin)], route=lambda r: ["crm"])
    with Store.open(db) as store:
        attempts = [
            AttemptRecord(1, "failed", now - 60, 0.1, "HTTP 503", now) for _ in range(failures)
        ]
        attempts += [AttemptRecord(1, "delivered", now - 30, d) for d in durations]
        store.record_attempts(attempts)
        store.set_state(HEARTBEAT_KEY, str(now))
    return config


def test_thresholds_name_what_to_fix(tmp_path: Path) -> None:
    config = _database(
        tmp_path, durations=[7.5] * 3, failures=2, received_at="2024-05-01T10:00:00Z"
    )
    report = collect_status(load_config(config))
    assert report.exit_code == 1, report.lines()
    lines = "\n".join(p.line() for p in report.problems)
    assert (
        "WARNING number +393331234333: no SMS stored for " in lines
        and "(expected within 1d 0h)" in lines
    )
    assert "WARNING number +390000000001: no SMS stored yet" in lines
    assert "WARNING sink crm: 40.0% of 5 attempts failed in the last hour (limit 1.0%)" in lines
    assert "WARNING sink crm: p95 delivery time 7.50s in the last hour (limit 5s)" in lines
    result = status(config)
    assert result.exit_code == 1 and result.stdout.startswith("WARNING: 4 problems\n")


def test_fast_reliable_recent_traffic_is_ok(tmp_path: Path) -> None:
    from inbound_mail.store.rows import iso

    config = _database(
        tmp_path, durations=[0.2] * 20, failures=0, received_at=iso(time.time() - 60)
    )
    text = (tmp_path / "c.toml").read_text().replace('"+390000000001" = "1d"\n', "")
    (tmp_path / "c.toml").write_text(text)
    report = collect_status(load_config(config))
    assert report.level == "OK", report.lines()
    assert report.sinks[0]["p95_seconds"] == 0.2


def test_a_restarted_daemon_is_no_longer_reported_stopped(mailbox: Mailbox, tmp_path: Path) -> None:
    db = tmp_path / "sms.db"
    account = mailbox.account(idle_deadline=5.0, connect_timeout=5.0)
    config = write_config(tmp_path / "c.toml", [account], db=db)
    with in_process_daemon(config):
        wait_until(lambda: status(config).exit_code == 0, 15)
    assert "daemon stopped at" in status(config).stdout
    with in_process_daemon(config):
        wait_until(lambda: status(config).exit_code == 0, 15)
        assert "stopped" not in status(config).stdout


def test_liveness_is_judged_on_when_the_sms_was_stored(tmp_path: Path) -> None:
    """A body dated 9999-12-31 must not silence "no SMS to this number" for ever."""
    db = tmp_path / "sms.db"
    config = write_config(
        tmp_path / "c.toml", db=db, extra=f'[status.expect_within]\n"{NUMBER}" = "1h"\n'
    )
    record = SmsRecord("+393470000001", NUMBER, "99991231235959", "9999-12-31T22:59:59Z", "x")
    origin = EmailOrigin(kind="eml", path=str(tmp_path / "x.eml"))
    two_hours_ago = time.time() - 7200
    with Store.open(db, clock=lambda: two_hours_ago) as store:
        store.ingest([IngestItem(b"raw", record, origin)])
    with Store.open(db) as store:
        store.set_state(HEARTBEAT_KEY, str(time.time()))
    report = collect_status(load_config(config))
    lines = [p.line() for p in report.problems]
    assert lines == [
        f"WARNING number {NUMBER}: no SMS stored for 2h 0m (expected within 1h 0m): check that the "
        "provider still delivers this number by email to the mailbox, and that the mail is "
        "not filtered as spam"
    ], lines
    assert report.numbers[0]["last_stored_at"].startswith(
        datetime.fromtimestamp(two_hours_ago, UTC).strftime("%Y-%m-%dT%H:%M")
    )


def test_no_database_is_unknown(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", db=tmp_path / "missing.db")
    result = status(config)
    assert result.exit_code == 3, "Nagios: a check that cannot read its data is UNKNOWN"
    assert "UNKNOWN database:" in result.stdout and "does not exist" in result.stdout
    assert not (tmp_path / "missing.db").exists(), "status never creates a database"
