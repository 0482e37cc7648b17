"""The parse pool of ``backfill`` and ``import`` (inbound_mail.sources.pool): the same
records as the inline path, and a parse worker that dies costs one email.

Workers are really killed: the ``crash-parse`` fault point SIGKILLs the process
that parses an email carrying ``X-Inbound-Mail-Fault: crash-parse``, which with
a pool is a worker, not the writer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from inbound_mail.config.reader import load_config
from inbound_mail.errors import ConfigError
from inbound_mail.models import EmailOrigin
from inbound_mail.parse.message import DEFAULT_OPTIONS
from inbound_mail.sources.imap.backfill import BackfillRequest, run_backfill
from inbound_mail.sources.importer import import_emails
from inbound_mail.sources.inflight import CRASH_REASON
from inbound_mail.sources.pool import GROUP, INLINE_BELOW, MAX_AUTO_WORKERS, ParsePool, auto_workers
from inbound_mail.store.db import Store
from inbound_mail.store.rows import IngestResult
from inbound_mail.testing.wait import wait_until
from testsupport.mailbox import Mailbox

from helpers import UNCHECKED_PARSE, count, provider_email, rows, write_config

CRASH = {"INBOUND_MAIL_FAULT": "crash-parse"}


sms = partial(provider_email, word="pool")


def crashing(n: int) -> bytes:
    return b"X-Inbound-Mail-Fault: crash-parse\r\n" + sms(n)


def stranger(n: int) -> bytes:
    return f"From: someone@example.org\r\nSubject: hi {n}\r\n\r\nnot an SMS\r\n".encode()


def broken(n: int) -> bytes:
    return f"From: smsin@agiletelecom.com\r\nSubject: {n}\r\n\r\nno fields here\r\n".encode()


def mixed(total: int) -> list[bytes]:
    kinds = (sms, sms, stranger, broken)
    return [kinds[n % len(kinds)](n) for n in range(total)]


def cli(
    config: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    base = {k: v for k, v in os.environ.items() if k != "INBOUND_MAIL_FAULT"}
    return subprocess.run(
        [sys.executable, "-m", "inbound_mail", "--config", str(config), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env={**base, **(env or {})},
        timeout=300,
        check=False,
    )


def stored(db: Path) -> list[tuple[object, ...]]:
    return rows(db, "SELECT id, originator, text, message_id FROM messages ORDER BY id")


def test_a_pool_stores_what_the_inline_path_stores(tmp_path: Path) -> None:
    emails = [(raw, EmailOrigin("eml", path=f"/x/{n}.eml")) for n, raw in enumerate(mixed(250))]
    tallies = []
    for name, workers in (("inline", 1), ("pool", 2)):
        with (
            Store.open(tmp_path / f"{name}.db") as store,
            ParsePool(DEFAULT_OPTIONS, workers) as pool,
        ):
            tallies.append(import_emails(emails, store, DEFAULT_OPTIONS, pool=pool, batch_size=60))
            assert store.database.conn.execute("SELECT count(*) FROM parsing").fetchone()[0] == 0
    assert tallies[0] == tallies[1]
    assert (tallies[1].new, tallies[1].skipped, tallies[1].rejected) == (126, 62, 62)
    assert stored(tmp_path / "inline.db") == stored(tmp_path / "pool.db")
    reasons = "SELECT origin, reason, code FROM rejects ORDER BY origin"
    assert rows(tmp_path / "inline.db", reasons) == rows(tmp_path / "pool.db", reasons)


def test_an_import_with_a_pool_stopped_stores_what_it_shipped(tmp_path: Path) -> None:
    total = 2 * 6 * GROUP  # twice what a pool of 2 keeps in flight
    emails = [(sms(n), EmailOrigin("eml", path=f"/x/{n}.eml")) for n in range(total)]
    with Store.open(tmp_path / "sms.db") as store, ParsePool(DEFAULT_OPTIONS, 2) as pool:
        parsed = [0]

        def tick() -> None:
            parsed[0] += 1

        first = import_emails(
            emails, store, DEFAULT_OPTIONS, pool=pool, on_parsed=tick,
            should_stop=lambda: parsed[0] >= 150,
        )  # fmt: skip
        assert 150 <= first.new <= 150 + pool.depth * GROUP < total
        assert store.database.conn.execute("SELECT count(*) FROM parsing").fetchone()[0] == 0
        rest = import_emails(emails, store, DEFAULT_OPTIONS, pool=pool)
        assert (rest.new, rest.duplicates) == (total - first.new, first.new)


def test_import_a_worker_killed_by_one_email_costs_that_email_only(tmp_path: Path) -> None:
    db = tmp_path / "sms.db"
    folder = tmp_path / "export"
    folder.mkdir()
    total = 4 * INLINE_BELOW
    for n in range(total):
        (folder / f"{n:04d}.eml").write_bytes(crashing(n) if n == 40 else sms(n))
    config = write_config(tmp_path / "c.toml", db=db, extra=UNCHECKED_PARSE)
    done = cli(config, "import", str(folder), "--workers", "2", env=CRASH)
    assert done.returncode == 0, done.stderr.decode()
    assert count(db) == total - 1
    assert rows(db, "SELECT code, raw FROM rejects") == [("parser_crash", crashing(40))]
    assert str(rows(db, "SELECT reason FROM rejects")[0][0]).startswith(CRASH_REASON)
    assert count(db, "parsing") == 0
    assert done.stderr.count(b"parse.worker_died") == 2  # alone, twice: then a reject
    again = cli(config, "import", str(folder), "--workers", "2", env=CRASH)
    assert again.returncode == 0 and count(db) == total - 1 and count(db, "rejects") == 1


def test_backfill_a_worker_killed_by_one_email_costs_that_email_only(
    mailbox: Mailbox, tmp_path: Path
) -> None:
    db = tmp_path / "sms.db"
    total = 3 * INLINE_BELOW
    mailbox.deliver_files([crashing(n) if n == 7 else sms(n) for n in range(total)])
    account = mailbox.account(idle_deadline=5.0, connect_timeout=5.0)
    config = write_config(tmp_path / "c.toml", [account], db=db, extra=UNCHECKED_PARSE)
    done = cli(config, "backfill", "--account", mailbox.user, "--workers", "2", env=CRASH)
    assert done.returncode == 0, done.stderr.decode()
    assert count(db) == total - 1
    assert rows(db, "SELECT code, raw FROM rejects") == [("parser_crash", crashing(7))]
    assert count(db, "parsing") == 0


def test_backfill_fetches_and_ships_the_next_group_before_storing_the_last(
    mailbox: Mailbox, tmp_path: Path
) -> None:
    """The workers parse group i+1 while the writer stores group i: at each commit
    but the last, the next group is already recorded in flight.  Without a pool
    (``--workers 1``) nothing is in flight at a commit.  Either way every email is
    stored once, in UID order."""
    total, batch = 5 * INLINE_BELOW, 2 * INLINE_BELOW
    mailbox.deliver_files([sms(n) for n in range(total)])
    for workers, expect_ahead in ((2, True), (1, False)):
        db = tmp_path / f"w{workers}.db"
        account = mailbox.account(fetch_batch=batch)
        config = load_config(write_config(tmp_path / "c.toml", [account], db=db))
        in_flight: list[int] = []

        def committed(
            folder: str, result: IngestResult, db: Path = db, seen: list[int] = in_flight
        ) -> None:
            seen.append(count(db, "parsing"))

        request = BackfillRequest(account=account.name, workers=workers, deliver=False)
        totals = run_backfill(config, request, on_batch=committed)
        assert [tally.new for tally in totals.values()] == [total]
        assert count(db) == total and count(db, "parsing") == 0
        uids = [uid for (uid,) in rows(db, "SELECT uid FROM emails ORDER BY id")]
        assert uids == sorted(uids)
        assert len(in_flight) == 3  # 64 + 64 + 32
        if expect_ahead:
            assert in_flight[:-1] == [batch, total - 2 * batch] and in_flight[-1] == 0
        else:
            assert in_flight == [0, 0, 0]


_SUBMIT_TWO = """
import sys
from pathlib import Path
from inbound_mail.parse.message import DEFAULT_OPTIONS
from inbound_mail.sources.pool import ParsePool
folder = Path(sys.argv[1])
groups = [[p.read_bytes() for p in sorted(folder.glob(g + "*.eml"))] for g in sys.argv[2:]]
with ParsePool(DEFAULT_OPTIONS, 2) as pool:
    parsing = [pool.submit(group) for group in groups]
    outcomes = [outcome for p in parsing for outcome in p.outcomes()]
    codes = [getattr(outcome, "code", type(outcome).__name__) for outcome in outcomes]
    print(pool.crashes, *codes)
"""


def test_the_writer_parses_only_while_no_other_group_is_in_flight(tmp_path: Path) -> None:
    """A small group (or mail from another sender) is parsed in the writer only when
    nothing else is recorded in flight: if the parse kills the writer, a restart
    must count the crash against that group's emails alone.  Behind another group
    it is shipped, so a crashing email kills workers, never the writer."""
    folder = tmp_path / "emails"
    folder.mkdir()
    for n in range(INLINE_BELOW):
        (folder / f"a{n:03d}.eml").write_bytes(sms(n))
    (folder / "b0.eml").write_bytes(crashing(100))
    (folder / "b1.eml").write_bytes(b"X-Inbound-Mail-Fault: crash-parse\r\n" + stranger(101))
    script = [sys.executable, "-c", _SUBMIT_TWO, str(folder)]
    env = {**os.environ, **CRASH}
    behind = subprocess.run([*script, "a", "b"], capture_output=True, env=env, timeout=300)
    assert behind.returncode == 0, behind.stderr.decode()
    crashes, *codes = behind.stdout.decode().split()
    assert codes == ["SmsRecord"] * INLINE_BELOW + ["parser_crash"] * 2
    assert int(crashes) == 2 * 2  # each crashing email killed two workers, alone
    alone = subprocess.run([*script, "b"], capture_output=True, env=env, timeout=300)
    assert alone.returncode == -signal.SIGKILL  # parsed in the writer: it died


def test_workers_setting_has_a_range(tmp_path: Path) -> None:
    assert auto_workers(3) == 3
    assert 1 <= auto_workers(0) <= MAX_AUTO_WORKERS
    config = write_config(tmp_path / "c.toml", db=tmp_path / "x.db", extra="[parse]\nworkers = 2\n")
    assert load_config(config).parse.workers == 2
    bad = write_config(tmp_path / "b.toml", db=tmp_path / "x.db", extra="[parse]\nworkers = 65\n")
    with pytest.raises(ConfigError, match="workers") as caught:
        load_config(bad)
    assert "0 to 64" in str(caught.value)


def test_ctrl_c_on_the_process_group_commits_and_stops(tmp_path: Path) -> None:
    # A terminal's Ctrl-C signals every process of the group, workers included:
    # they must keep parsing what was shipped, and the writer commits it.
    db = tmp_path / "sms.db"
    folder = tmp_path / "export"
    folder.mkdir()
    total = 6000
    for n in range(total):
        (folder / f"{n:05d}.eml").write_bytes(sms(n))
    config = write_config(tmp_path / "c.toml", db=db, extra=UNCHECKED_PARSE)
    argv = [sys.executable, "-m", "inbound_mail", "--config", str(config), "import"]
    argv += [str(folder), "--workers", "2", "--batch-size", "200"]
    env = {k: v for k, v in os.environ.items() if k != "INBOUND_MAIL_FAULT"}
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(lambda: count(db) >= 200, 120, message="a first batch committed")
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, stderr.decode()[-2000:]
    assert b"abandoned" not in stderr and b"committed" in stderr
    stored = count(db)
    assert 200 <= stored < total and count(db, "parsing") == 0
    again = cli(config, "import", str(folder), "--workers", "2")
    assert again.returncode == 0 and count(db) == total
    assert f"{total - stored} new, {stored} duplicates".encode() in again.stderr


def test_a_pool_started_ahead_parses_and_closes(tmp_path: Path) -> None:
    """``start`` spawns the workers in the background; a pool closed before its first
    task, or started twice, ends cleanly."""
    with ParsePool(DEFAULT_OPTIONS, 2) as unused:
        unused.start()
    with ParsePool(DEFAULT_OPTIONS, 2) as pool:
        pool.start()
        pool.start()
        outcomes = pool.submit([sms(n) for n in range(INLINE_BELOW)]).outcomes()
    assert [type(outcome).__name__ for outcome in outcomes] == ["SmsRecord"] * INLINE_BELOW
    assert pool.crashes == 0
