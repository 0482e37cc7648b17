"""`inbound-mail backfill` against a real Dovecot: date ranges, folders, dry runs, no changes.

The tests of the IMAP contract (``@ON_EVERY_SERVER``) run against Cyrus too, in both
namespace layouts; a folder is named as the server names it (``mailbox.folder``).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from inbound_mail.cli import cli
from testsupport.mailbox import Mailbox

from helpers import ON_EVERY_SERVER, count, provider_email, rows, write_config

sms = partial(provider_email, word="backfill")


def backfill(config: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--config", str(config), "backfill", *args])
    assert result.exit_code == 0, result.output
    return result.output


@ON_EVERY_SERVER
def test_date_range_folders_and_dry_run(mailbox: Mailbox, tmp_path: Path) -> None:
    archive = mailbox.folder("Archive")  # INBOX.Archive on Debian's Cyrus
    mailbox.append(sms(1, date="Mon, 01 Jan 2024 10:00:00 +0000"))
    mailbox.append(sms(2, date="Wed, 01 May 2024 10:00:00 +0000"))
    mailbox.append(sms(3, date="Sun, 01 Dec 2024 10:00:00 +0000"), folder=archive)
    db = tmp_path / "sms.db"
    config = write_config(tmp_path / "c.toml", [mailbox.account()], db=db)
    name = mailbox.user

    out = backfill(config, "--account", name, "--since", "2024-04-01", "--dry-run")
    assert "1 new" in out and "dry run" in out
    assert count(db) == 0, "a dry run stores nothing"

    backfill(config, "--account", name, "--since", "2024-04-01", "--before", "2024-06-01")
    assert [r[0] for r in rows(db, "SELECT text FROM messages")] == ["backfill 2"]

    out = backfill(config, "--account", name, "--all-folders")
    assert "Archive" in out and "INBOX" in out
    assert count(db) == 3
    assert rows(db, "SELECT count(*) FROM checkpoints") == [(0,)], "the daemon's checkpoints stay"
    for folder in ("INBOX", archive):
        assert not any("\\Seen" in f for f in mailbox.flags(folder).values()), folder

    again = backfill(config, "--account", name, "--all-folders")
    assert count(db) == 3 and count(db, "emails") == 3
    assert "0 read" in again, "recorded UIDs are skipped by a rerun"


@ON_EVERY_SERVER
def test_apply_after_marks_stored_mail(mailbox: Mailbox, tmp_path: Path) -> None:
    mailbox.append(sms(1, date="Mon, 01 Jan 2024 10:00:00 +0000"))
    db = tmp_path / "sms.db"
    config = write_config(tmp_path / "c.toml", [mailbox.account()], db=db)
    backfill(config, "--account", mailbox.user, "--apply-after")
    assert all("\\Seen" in f for f in mailbox.flags().values())


@ON_EVERY_SERVER
def test_backfill_queues_deliveries_unless_told_not_to(mailbox: Mailbox, tmp_path: Path) -> None:
    old = mailbox.folder("Old")
    mailbox.append(sms(1, date="Mon, 01 Jan 2024 10:00:00 +0000"))
    mailbox.append(sms(2, date="Mon, 01 Jan 2024 10:00:00 +0000"), folder=old)
    db = tmp_path / "sms.db"
    sink = {"name": "out", "type": "jsonl", "path": str(tmp_path / "out.jsonl")}
    config = write_config(tmp_path / "c.toml", [mailbox.account()], db=db, sinks=[sink])
    backfill(config, "--account", mailbox.user)
    backfill(config, "--account", mailbox.user, "--folder", old, "--no-deliver")
    assert count(db) == 2
    queued = rows(db, "SELECT m.text FROM deliveries d JOIN messages m ON m.id = d.sms_id")
    assert queued == [("backfill 1",)]


def test_unknown_account_is_a_clear_error(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", [], db=tmp_path / "sms.db")
    result = CliRunner().invoke(cli, ["--config", str(config), "backfill", "--account", "nope"])
    assert result.exit_code == 1
    assert "no account named 'nope'" in result.output


def test_messages_after_backfill_are_json(mailbox: Mailbox, tmp_path: Path) -> None:
    mailbox.append(sms(7, date="Mon, 01 Jan 2024 10:00:00 +0000"))
    db = tmp_path / "sms.db"
    config = write_config(tmp_path / "c.toml", [mailbox.account()], db=db)
    backfill(config, "--account", mailbox.user)
    result = CliRunner().invoke(cli, ["--config", str(config), "messages", "--format", "jsonl"])
    (line,) = result.output.splitlines()
    assert json.loads(line)["text"] == "backfill 7"


@ON_EVERY_SERVER
def test_search_in_windows_finds_every_email(
    mailbox: Mailbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import inbound_mail.sources.imap.sync as sync

    monkeypatch.setattr(sync, "SEARCH_WINDOW", 7)
    mailbox.deliver_files([sms(n, date="Mon, 01 Jan 2024 10:00:00 +0000") for n in range(30)])
    db = tmp_path / "sms.db"
    config = write_config(tmp_path / "c.toml", [mailbox.account(fetch_batch=4)], db=db)
    backfill(config, "--account", mailbox.user)
    assert count(db) == 30


@ON_EVERY_SERVER
def test_sizes_come_from_one_search_and_only_large_emails_are_sized(
    mailbox: Mailbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``RFC822.SIZE`` is fetched for the emails a ``SEARCH LARGER`` names, not for all."""
    import imapclient

    import inbound_mail.sources.imap.sync as sync

    monkeypatch.setattr(sync, "SMALL_EMAIL", 2048)
    sized: list[int] = []
    real_fetch = imapclient.IMAPClient.fetch

    def fetch(self: imapclient.IMAPClient, messages: Any, data: Any, modifiers: Any = None) -> Any:
        if "RFC822.SIZE" in data:
            sized.extend(messages)
        return real_fetch(self, messages, data, modifiers)

    monkeypatch.setattr(imapclient.IMAPClient, "fetch", fetch)
    day = "Mon, 01 Jan 2024 10:00:00 +0000"
    mid = sms(2, date=day).replace(b"backfill 2", b"backfill 2 " + b"m" * 4000)
    big = sms(4, date=day).replace(b"backfill 4", b"backfill 4 " + b"b" * 20000)
    mailbox.deliver_files([sms(1, date=day), mid, sms(3, date=day), big, sms(5, date=day)])
    db = tmp_path / "sms.db"
    account = mailbox.account(fetch_batch=10, max_size=16384)
    config = write_config(tmp_path / "c.toml", [account], db=db)
    backfill(config, "--account", mailbox.user)
    uids = mailbox.uids()
    assert sized == [uids[1], uids[3]], "only the two emails over SMALL_EMAIL were sized"
    texts = sorted(text[:10] for (text,) in rows(db, "SELECT text FROM messages"))
    assert texts == ["backfill 1", "backfill 2", "backfill 3", "backfill 5"]
    ((reason,),) = rows(db, "SELECT reason FROM rejects")
    assert "over accounts[0].max_size = 16384" in reason
