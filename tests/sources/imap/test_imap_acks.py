"""The ``after`` action and folder names: a refused acknowledgement never stops new
mail, and configured names resolve through the server's NAMESPACE (RFC 2342).

Against real Dovecots: the shared one (empty personal prefix) and one of the
test's own with Courier's / Debian Cyrus's layout (personal prefix ``INBOX.``).
"""

from __future__ import annotations

import imaplib
import logging
import threading
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from prometheus_client.parser import text_string_to_metric_families

from inbound_mail.cli import cli
from inbound_mail.config.model import AccountConfig
from inbound_mail.config.reader import load_config
from inbound_mail.service.status import collect_status
from inbound_mail.sources.imap.acks import AckRetries
from inbound_mail.sources.imap.backfill import BackfillRequest, run_backfill
from inbound_mail.sources.imap.connection import server_text
from inbound_mail.sources.imap.namespace import FolderNames
from testsupport.dovecot import DovecotFactory, DovecotServer
from testsupport.mailbox import Mailbox

from helpers import (
    ON_EVERY_SERVER,
    count,
    in_process_daemon,
    provider_email,
    rows,
    wait_until,
    write_config,
)

# Courier's and Debian Cyrus's layout: every personal folder lives under "INBOX.".
INBOX_PREFIX = """
namespace inbox {
  inbox = yes
  prefix = INBOX.
  separator = .
}
"""
FAST: dict[str, Any] = {"idle_deadline": 5.0, "connect_timeout": 5.0}
# A folder name every server of the suite refuses to create (Dovecot: "Mailbox
# name too long", Cyrus: "Invalid mailbox name"), as Debian's Cyrus refused
# "Processed" before names were resolved through NAMESPACE.
REFUSED = "R" * 600


sms = partial(provider_email, word="ack")


def check(config: Path) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), "check"])


# -- the rules, on their own ---------------------------------------------------------
@pytest.mark.parametrize(
    ("names", "configured", "expected"),
    [
        (FolderNames("INBOX.", "."), "Processed", "INBOX.Processed"),
        (FolderNames("INBOX.", "."), "INBOX", "INBOX"),
        (FolderNames("INBOX.", "."), "inbox", "inbox"),
        (FolderNames("INBOX.", "."), "INBOX.Processed", "INBOX.Processed"),
        (FolderNames("INBOX.", "."), "inbox.Processed", "inbox.Processed"),
        (FolderNames("INBOX.", "."), "INBOXES", "INBOX.INBOXES"),
        (FolderNames("INBOX.", ".", ("Other Users.", "Shared.")), "Shared.sms", "Shared.sms"),
        (FolderNames("", "/"), "Processed", "Processed"),
        (FolderNames("", "."), "INBOX.Sub", "INBOX.Sub"),
        (FolderNames(), "Archive/SMS", "Archive/SMS"),
    ],
)
def test_folder_names_resolve_under_the_personal_prefix(
    names: FolderNames, configured: str, expected: str
) -> None:
    assert names.resolve(configured) == expected


def test_a_refused_folder_backs_off_per_folder_and_a_success_clears_it() -> None:
    now = [100.0]
    retries = AckRetries(lambda attempt: 10.0 * 2**attempt, clock=lambda: now[0])
    assert retries.due("INBOX") and not retries.any_due()

    retries.refused("INBOX", "move to 'X'", "[CANNOT] no", owed=1)
    assert not retries.due("INBOX") and retries.due("Other"), "per folder"
    now[0] += 9.9
    assert not retries.due("INBOX") and not retries.any_due()
    now[0] += 0.1
    assert retries.due("INBOX") and retries.any_due()

    retries.refused("INBOX", "move to 'X'", "[CANNOT] no", owed=3)
    now[0] += 19.9
    assert not retries.due("INBOX"), "the second wait is twice the first"
    retries.deferred("INBOX", owed=5)
    assert [(f.folder, f.failures, f.owed) for f in retries.failing] == [("INBOX", 2, 5)]
    assert retries.failures_total == 2

    retries.succeeded("INBOX")
    assert retries.failing == [] and retries.due("INBOX")


def test_the_servers_answer_is_text_not_a_bytes_literal() -> None:
    assert server_text(imaplib.IMAP4.error(b"[CANNOT] Invalid name")) == "[CANNOT] Invalid name"
    assert server_text(imaplib.IMAP4.error("CREATE command error: BAD [b'No way']")) == (
        "CREATE command error: BAD [No way]"
    )


# -- a refused `after` never blocks new mail ---------------------------------------------
@ON_EVERY_SERVER
def test_a_refused_move_never_blocks_new_mail_and_is_retried_with_backoff(
    mailbox: Mailbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="inbound_mail")
    db = tmp_path / "sms.db"
    account = mailbox.account(after=f"move:{REFUSED}", **FAST)
    extra = '[metrics]\nlisten = "127.0.0.1:0"\n'
    config = write_config(tmp_path / "c.toml", [account], db=db, extra=extra)
    mailbox.append(sms(0))
    with in_process_daemon(config) as daemon:
        worker = daemon.account_workers[0]
        health = worker.health
        wait_until(lambda: count(db) == 1 and health.ack_failures >= 1, 15)

        for n in range(1, 6):  # each one is a pass of its own, with an ack owed
            mailbox.append(sms(n))
            wait_until(lambda n=n: count(db) == n + 1, 15)  # type: ignore[misc]  # mypy: lambda default
        wait_until(lambda: health.acks_owed == 6, 10)
        assert health.reconnects == 0, "a refused ack never ends the session"
        assert health.ack_failures <= 3, "retried with backoff, not at every pass"
        assert rows(db, "SELECT count(*) FROM pending_acks") == [(6,)]
        assert mailbox.message_count("INBOX") == 6, "nothing moved, nothing lost"

        # The owed acks are tried again once the backoff is over, with no new mail.
        failures = health.ack_failures
        wait_until(lambda: health.ack_failures > failures, 30)

        refusals = [r for r in caplog.records if r.getMessage() == "imap.ack_refused"]
        fields = refusals[0].inbound_mail_fields  # type: ignore[attr-defined]  # logging extra=
        assert fields["folder"] == "INBOX"
        assert fields["action"] == f"move to {mailbox.folder(REFUSED)!r}"
        assert "create failed" in fields["answer"] and "b'" not in fields["answer"]
        assert "accounts[0].after" in fields["fix"]

        report = wait_until(
            lambda: r if (r := collect_status(load_config(config))).problems else None, 10
        )
        (problem,) = [p for p in report.problems if "acknowledgements owed" in p.message]
        assert problem.level == "WARNING" and report.exit_code == 1
        assert "acknowledgements owed: 6 (INBOX: move to " in problem.message
        assert "create failed" in problem.message and "accounts[0].after" in problem.message

        assert daemon.metrics is not None and daemon.metrics.address is not None
        text = httpx.get(f"http://127.0.0.1:{daemon.metrics.address[1]}/metrics").text
        samples = {
            (s.name, s.labels.get("account")): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        assert samples[("inbound_mail_acks_owed", mailbox.user)] == 6
        assert samples[("inbound_mail_ack_failures_total", mailbox.user)] >= 2

        # Fixing the config settles every owed ack with the action now in force.
        write_config(
            tmp_path / "c.toml",
            [account.__class__(**{**_fields(account), "after": "move:Done"})],
            db=db,
            extra=extra,
        )
        daemon.request_reload()
        wait_until(lambda: mailbox.message_count("INBOX") == 0, 30)
        wait_until(lambda: rows(db, "SELECT count(*) FROM pending_acks") == [(0,)], 10)
        wait_until(
            lambda: (
                not any(
                    "acknowledgements" in p.message
                    for p in collect_status(load_config(config)).problems
                )
            ),
            15,
        )
    assert mailbox.message_count(mailbox.folder("Done")) == 6


def _fields(account: AccountConfig) -> dict[str, Any]:
    return {name: getattr(account, name) for name in account.__dataclass_fields__}


# -- NAMESPACE ---------------------------------------------------------------------------
@pytest.fixture
def prefixed(fresh_dovecot: DovecotFactory) -> DovecotServer:
    """A Dovecot whose personal namespace is ``INBOX.`` (separator ``.``)."""
    return fresh_dovecot(extra_conf=INBOX_PREFIX)


def test_move_and_folders_resolve_under_the_inbox_prefix(
    prefixed: DovecotServer, tmp_path: Path
) -> None:
    mailbox = prefixed.new_mailbox("prefix")
    mailbox.create_folder("INBOX.Sub")
    mailbox.append(sms(1))
    mailbox.append(sms(2), folder="INBOX.Sub")
    db = tmp_path / "sms.db"
    account = mailbox.account(after="move:Processed", folders=["INBOX", "Sub"], **FAST)
    config = write_config(tmp_path / "c.toml", [account], db=db)
    with in_process_daemon(config) as daemon:
        wait_until(lambda: count(db) == 2, 15)
        wait_until(lambda: mailbox.message_count("INBOX.Processed") == 2, 15)
        mailbox.append(sms(3))  # pushed through IDLE, moved too
        wait_until(lambda: mailbox.message_count("INBOX.Processed") == 3, 15)
        assert daemon.account_workers[0].health.ack_failures == 0
    assert sorted(rows(db, "SELECT DISTINCT folder FROM emails")) == [("INBOX",), ("INBOX.Sub",)]
    assert rows(db, "SELECT count(*) FROM pending_acks") == [(0,)]
    assert mailbox.message_count("INBOX") == 0 and mailbox.message_count("INBOX.Sub") == 0


def test_backfill_resolves_folder_names_too(prefixed: DovecotServer, tmp_path: Path) -> None:
    mailbox = prefixed.new_mailbox("backfill")
    mailbox.append(sms(1), folder="INBOX.Old")
    account = mailbox.account(**FAST)
    config = load_config(write_config(tmp_path / "c.toml", [account], db=tmp_path / "sms.db"))
    totals = run_backfill(
        config,
        BackfillRequest(account=account.name, folders=["Old"], since=date(2000, 1, 1)),
        stop=threading.Event(),
    )
    assert {folder: tally.new for folder, tally in totals.items()} == {"INBOX.Old": 1}


def test_check_shows_each_resolved_name_and_creates_the_move_target(
    prefixed: DovecotServer, tmp_path: Path
) -> None:
    mailbox = prefixed.new_mailbox("check")
    mailbox.create_folder("INBOX.Sub")
    account = mailbox.account(after="move:Processed", folders=["INBOX", "Sub"])
    config = write_config(tmp_path / "c.toml", [account], db=tmp_path / "sms.db")
    result = check(config)
    assert result.exit_code == 0, result.stdout
    assert "ok   account " in result.stdout
    assert "folders: 'INBOX': 0 provider emails" in result.stdout
    assert "folders: 'Sub' -> 'INBOX.Sub': 0 provider emails" in result.stdout
    assert (
        "after: move to 'Processed' -> 'INBOX.Processed': the folder did not exist, created it"
        in (result.stdout)
    )
    assert mailbox.message_count("INBOX.Processed") == 0, "it exists now"
    again = check(config)
    assert "move to 'Processed' -> 'INBOX.Processed': the folder exists" in again.stdout


def test_check_names_a_missing_folder_as_the_server_would(
    prefixed: DovecotServer, tmp_path: Path
) -> None:
    mailbox = prefixed.new_mailbox("missing")
    account = mailbox.account(folders=["INBOX", "Nope"])
    config = write_config(tmp_path / "c.toml", [account], db=tmp_path / "sms.db")
    result = check(config)
    assert result.exit_code == 1, result.stdout
    (fail,) = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert "'Nope' does not exist (the server has 'INBOX'; its folders are named INBOX.NAME" in fail
    assert "create it, or fix accounts[0].folders (the server's name for it: 'INBOX.Nope')" in fail


@ON_EVERY_SERVER
def test_check_fails_when_the_move_target_cannot_be_created(
    mailbox: Mailbox, tmp_path: Path
) -> None:
    account = mailbox.account(after=f"move:{REFUSED}")
    config = write_config(tmp_path / "c.toml", [account], db=tmp_path / "sms.db")
    result = check(config)
    assert result.exit_code == 1, result.stdout
    (fail,) = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert "the folder does not exist and the server refuses to create it" in fail
    assert f"after: move to {REFUSED!r}" in fail and repr(mailbox.folder(REFUSED)) in fail
    assert "create failed" in fail and "b'" not in fail
    assert "accounts[0].after" in fail
