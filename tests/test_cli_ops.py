"""Operator-facing CLI behaviour: read-only commands, ``status`` exit codes, ``run``
without accounts, ``import`` robustness and progress, ``parse`` on an mbox, the table."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from inbound_mail.cli import cli
from inbound_mail.testing.emails import build_provider_email

from helpers import UNCHECKED_PARSE, provider_email

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
NUMBER = "+393331234333"


@pytest.fixture(autouse=True)
def _unchecked(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """These emails are unsigned: run with authenticate = "off" (tests/helpers.py says
    why; trust has its own tests).  Outside pytest's private tmp folders, readable by
    all: some tests run the CLI as ``nobody``."""
    folder = Path(tempfile.mkdtemp(prefix="inbound-mail-unchecked-"))
    folder.chmod(0o755)
    config = folder / "unchecked.toml"
    config.write_text(UNCHECKED_PARSE, encoding="utf-8")
    config.chmod(0o644)
    monkeypatch.setenv("INBOUND_MAIL_CONFIG", str(config))
    yield
    shutil.rmtree(folder, ignore_errors=True)


def invoke(*args: str, input: bytes | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def _mount(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A private tmpfs (root can make it read-only, which chmod cannot do for root)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    result = _mount(["-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount)])
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# -- item 9: read commands open the database read-only ------------------------------------
@pytest.mark.parametrize("command", ["messages", "rejects", "deliveries"])
def test_read_commands_on_a_missing_database_say_so_and_create_nothing(
    tmp_path: Path, command: str
) -> None:
    db = tmp_path / "typo.db"
    result = invoke("--db", str(db), command)
    assert result.exit_code == 1
    assert f"database {db} does not exist" in result.output, result.output
    assert list(tmp_path.iterdir()) == [], "no database (nor -wal, -shm) created"


def test_status_on_a_missing_database_is_unknown_and_creates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "typo.db"
    result = invoke("--db", str(db), "status")
    assert result.exit_code == 3, result.output
    assert result.output.startswith(f"UNKNOWN: 1 problem\nUNKNOWN database: database {db}")
    assert "does not exist" in result.output
    assert list(tmp_path.iterdir()) == []


def test_status_with_an_unreadable_config_is_unknown(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[accounts\n")
    result = invoke("--config", str(config), "status")
    assert result.exit_code == 3, result.output
    assert result.output.startswith("UNKNOWN: 1 problem\nUNKNOWN config: ")
    assert str(config) in result.output and "not valid TOML" in result.output
    as_json = json.loads(invoke("--config", str(config), "status", "--json").output)
    assert as_json["status"] == "UNKNOWN" and as_json["exit_code"] == 3
    missing = invoke("--config", str(tmp_path / "nope.toml"), "status")
    assert missing.exit_code == 3 and "file not found" in missing.output


def test_status_on_a_file_that_is_not_a_database_is_unknown(tmp_path: Path) -> None:
    db = tmp_path / "notes.db"
    db.write_bytes(b"not sqlite at all\n" * 100)
    result = invoke("--db", str(db), "status")
    assert result.exit_code == 3 and "not an SQLite database" in result.output, result.output


def _as_nobody(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``inbound-mail ARGS`` run as the user nobody (root reads and writes everything)."""
    import os
    import shutil
    import sys

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a command as another user")
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    return subprocess.run(
        [*argv, "-m", "inbound_mail", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder outside the tests' private (0700) tmp_path, so that nobody can reach it."""
    import shutil
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="inbound-mail-shared-"))
    top.chmod(0o755)
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_read_commands_work_on_a_database_the_user_cannot_write(shared_dir: Path) -> None:
    db = shared_dir / "sms.db"
    assert invoke("--db", str(db), "import", str(FIXTURES)).exit_code == 0
    db.chmod(0o644)  # readable by nobody; neither it nor its folder writable
    expected = invoke("--db", str(db), "messages", "--format", "json").output
    messages = _as_nobody("--db", str(db), "messages", "--format", "json", cwd=shared_dir)
    assert messages.returncode == 0, messages.stderr
    assert json.loads(messages.stdout) == json.loads(expected)
    rejects = _as_nobody("--db", str(db), "rejects", "--format", "json", cwd=shared_dir)
    assert rejects.returncode == 0 and json.loads(rejects.stdout), rejects.stderr
    deliveries = _as_nobody("--db", str(db), "deliveries", cwd=shared_dir)
    assert deliveries.returncode == 0, deliveries.stderr
    status = _as_nobody("--db", str(db), "status", cwd=shared_dir)
    assert status.returncode == 2 and "no heartbeat" in status.stdout, status.stderr


def test_read_commands_work_on_a_read_only_file_system(small_fs: Path) -> None:
    db = small_fs / "sms.db"
    assert invoke("--db", str(db), "import", str(FIXTURES)).exit_code == 0
    expected = invoke("--db", str(db), "messages", "--format", "json").output
    result = _mount(["-o", "remount,ro", str(small_fs)])
    assert result.returncode == 0, result.stderr
    assert invoke("--db", str(db), "messages", "--format", "json").output == expected
    assert invoke("--db", str(db), "status").exit_code == 2


# -- item 5: no daemon that does nothing --------------------------------------------------
@pytest.mark.parametrize("args", [("run",), ("run", "--once")])
def test_run_without_a_config_file_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INBOUND_MAIL_CONFIG", raising=False)
    if Path("/etc/inbound-mail/config.toml").exists():
        pytest.skip("this machine has a system-wide config")
    result = invoke("--db", str(tmp_path / "sms.db"), *args)
    assert result.exit_code == 1
    assert "no config file found" in result.output
    assert "$INBOUND_MAIL_CONFIG (unset)" in result.output
    assert str(tmp_path / "inbound-mail.toml") in result.output
    assert "/etc/inbound-mail/config.toml" in result.output
    assert not (tmp_path / "sms.db").exists(), "nothing started, nothing created"


def test_run_with_a_config_without_accounts_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[database]\npath = "{tmp_path / "sms.db"}"\n')
    result = invoke("--config", str(config), "run", "--once")
    assert result.exit_code == 1
    assert f"{config}: accounts: no [[accounts]] in the file" in result.output


# -- item 7: one unreadable path never costs the rest --------------------------------------
sms = partial(provider_email, word="sms")


def _imported(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])


def test_import_reports_links_that_loop_or_dangle_and_imports_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "export"
    (root / "b").mkdir(parents=True)
    (root / "a.eml").write_bytes(sms(1))
    (root / "b" / "c.eml").write_bytes(sms(2))
    (root / "b" / "loop.eml").symlink_to(root / "b" / "loop.eml")
    (root / "dangling.eml").symlink_to(root / "gone.eml")
    (root / "z.eml").write_bytes(sms(3))
    db = tmp_path / "sms.db"
    result = invoke("--db", str(db), "import", str(root))
    assert result.exit_code == 1, result.output
    assert f"cannot read {root / 'b' / 'loop.eml'}: Too many levels of symbolic links" in (
        result.output
    )
    assert f"cannot read {root / 'dangling.eml'}: No such file or directory" in result.output
    assert "imported: 3 read, 3 new, 0 duplicates, 0 skipped, 0 rejected" in result.output
    assert "2 paths that cannot be read" in result.output
    assert "Error: 2 paths could not be read" in result.output
    assert "Traceback" not in result.output
    assert _imported(db) == 3


def test_import_skips_fifos_instead_of_hanging_on_them(tmp_path: Path) -> None:
    import os
    import sys

    fifo = tmp_path / "pipe.mbox"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    os.mkfifo(folder / "also-a-pipe")
    (folder / "a.eml").write_bytes(sms(1))
    db = tmp_path / "sms.db"
    done = subprocess.run(
        [sys.executable, "-m", "inbound_mail", "--db", str(db), "import", str(fifo), str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "2 files that are not email" in done.stderr, "neither FIFO is waited on"
    assert _imported(db) == 1


def test_import_as_a_user_who_cannot_list_a_folder_imports_the_rest() -> None:
    """Root reads every folder whatever its mode: the import runs as nobody instead."""
    import os
    import shutil
    import sys
    import tempfile

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the import as another user")
    top = Path(tempfile.mkdtemp(prefix="inbound-mail-unreadable-"))
    try:
        top.chmod(0o777)
        export = top / "export"
        (export / "secret").mkdir(parents=True)
        (export / "a.eml").write_bytes(sms(1))
        (export / "secret" / "b.eml").write_bytes(sms(2))
        (export / "unreadable.eml").write_bytes(sms(3))
        (export / "z.eml").write_bytes(sms(4))
        (export / "secret").chmod(0o000)
        (export / "unreadable.eml").chmod(0o000)
        db = top / "sms.db"
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
        done = subprocess.run(
            [*argv, "-m", "inbound_mail", "--db", str(db), "import", str(export)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=top,
        )
        if "Permission denied" not in done.stderr and done.returncode != 1:
            pytest.skip(f"nobody could not run the import here: {done.stderr[-500:]}")
        assert done.returncode == 1, done.stderr
        secret, unreadable = export / "secret", export / "unreadable.eml"
        assert f"cannot read {secret}: cannot list the folder: Permission denied" in done.stderr
        assert f"cannot read {unreadable}: Permission denied" in done.stderr
        assert "imported: 2 read, 2 new" in done.stderr
        assert "Traceback" not in done.stderr
        assert _imported(db) == 2
    finally:
        for path in (top / "export" / "secret", top / "export" / "unreadable.eml"):
            if path.exists():
                path.chmod(0o700)
        shutil.rmtree(top, ignore_errors=True)


# -- item 11: import progress and Ctrl-C ---------------------------------------------------
def test_import_progress_moves_per_email_not_per_transaction(tmp_path: Path) -> None:
    from inbound_mail.config.model import ParseOptions
    from inbound_mail.models import EmailOrigin
    from inbound_mail.sources.importer import import_emails
    from inbound_mail.store.db import Store

    events: list[str] = []
    emails = [(sms(n), EmailOrigin("eml", path=f"/x/{n}.eml")) for n in range(5)]
    with Store.open(tmp_path / "sms.db") as store:
        import_emails(
            emails,
            store,
            ParseOptions(),
            batch_size=10_000,
            on_parsed=lambda: events.append("email"),
            on_batch=lambda result: events.append("commit"),
        )
    assert events == ["email"] * 5 + ["commit"]


def test_ctrl_c_during_import_commits_what_was_read_and_a_rerun_completes(
    tmp_path: Path,
) -> None:
    import re
    import signal
    import sys

    from inbound_mail.testing.wait import wait_until

    total = 8_000
    mbox = tmp_path / "big.mbox"
    with mbox.open("wb") as out:
        for n in range(total):
            out.write(b"From x\n" + sms(n).replace(b"\r\n", b"\n") + b"\n")
    db = tmp_path / "sms.db"
    argv = [sys.executable, "-m", "inbound_mail", "--db", str(db), "import"]
    proc = subprocess.Popen(
        [*argv, "--batch-size", "200", str(mbox)], stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until(lambda: db.exists() and _count_or_zero(db) >= 200, 60)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "Aborted!" not in stderr and "Traceback" not in stderr, stderr
    match = re.search(r"interrupted: (\d+) emails committed\. Run the same import again", stderr)
    assert match, stderr
    committed = int(match.group(1))
    assert 200 <= committed < total, "the run was cut short"
    assert _imported(db) == committed, "the count said is the count stored"
    rerun = subprocess.run([*argv, str(mbox)], capture_output=True, text=True, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{total - committed} new, {committed} duplicates" in rerun.stderr
    assert _imported(db) == total


def _count_or_zero(db: Path) -> int:
    import sqlite3

    try:
        return _imported(db)
    except sqlite3.Error:
        return 0


# -- item 11: parse on an mbox -------------------------------------------------------------
def test_parse_on_an_mbox_says_how_many_emails_and_parses_the_first(tmp_path: Path) -> None:
    mbox = tmp_path / "export.mbox"
    mbox.write_bytes(
        b"".join(b"From x\n" + sms(n).replace(b"\r\n", b"\n") + b"\n" for n in (1, 2, 3))
    )
    result = CliRunner().invoke(cli, ["parse", str(mbox)])
    assert result.exit_code == 0, result.output
    assert result.stderr == (
        f"{mbox} is an mbox holding 3 emails: parsing the first "
        f"(`inbound-mail import {mbox}` reads them all)\n"
    )
    record = json.loads(result.stdout)
    assert record["text"] == "sms 1" and record["originator"] == "+393470000001"
    piped = CliRunner().invoke(cli, ["parse", "-"], input=mbox.read_bytes())
    assert piped.stderr.startswith("the input is an mbox holding 3 emails: parsing the first\n")
    assert json.loads(piped.stdout)["text"] == "sms 1"


# -- item 11: the table keeps its columns ---------------------------------------------------
def test_messages_table_aligns_wide_characters_and_shows_control_characters_escaped(
    tmp_path: Path,
) -> None:
    from inbound_mail.output import display_width

    texts = [
        "plain",
        "tab\there",
        "中文短信",
        "emoji 😀🎉",
        "e\u0301te",
        "\x1b[31mred\u202e",
        "中" * 40,
    ]
    for n, text in enumerate(texts):
        raw = build_provider_email(f"+39347000000{n}", NUMBER, f"2024050112000{n}", text)
        (tmp_path / f"{n}.eml").write_bytes(raw)
    db = tmp_path / "sms.db"
    assert invoke("--db", str(db), "import", str(tmp_path)).exit_code == 0
    result = invoke("--db", str(db), "messages", "--format", "table")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 2 + len(texts)
    # The last column (id) starts at the same terminal column on every line.
    starts = {display_width(line[: line.rindex("  ") + 2]) for line in lines}
    assert len(starts) == 1, result.output
    assert "tab\\there" in result.output and "\t" not in result.output
    assert "\\x1b[31mred\\u202e" in result.output and "\x1b" not in result.output
    assert "中" * 23 + "\u2026" in result.output, "cut to the column's width"


# -- item 11: the demo keeps its database ---------------------------------------------------
def test_demo_keeps_its_database_and_prints_the_exact_commands() -> None:
    import shlex
    import shutil
    import threading

    from testsupport.demo import run_demo

    said: list[str] = []
    db = run_demo(FIXTURES, keep=None, echo=said.append, stop=threading.Event())
    try:
        assert db.is_file()
        assert not (db.parent / "dovecot").exists(), "the throwaway Dovecot is gone"
        text = "\n".join(said)
        command = f"inbound-mail --db {shlex.quote(str(db))} rejects"
        assert f"#   {command}\n" in text, text
        result = invoke(*shlex.split(command)[1:], "--format", "json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.output), "the demo's rejects are there to see"
    finally:
        shutil.rmtree(db.parent, ignore_errors=True)


# -- item 4: the heartbeat file a full disk cannot stop --------------------------------------
def _fill(path: Path) -> None:
    """Write ``path`` until its file system is full."""
    import errno

    with path.open("wb", buffering=0) as file:
        for size in (65536, 4096, 512, 1):
            try:
                while file.write(b"\0" * size):
                    pass
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise


def test_the_heartbeat_file_is_rewritten_in_place_on_a_full_disk(small_fs: Path) -> None:
    from inbound_mail.service.status import HeartbeatFile, read_heartbeat_file

    db = small_fs / "sms.db"
    db.touch(mode=0o640)
    beacon = HeartbeatFile(db)
    beacon.open()
    try:
        assert beacon.path == small_fs / "sms.db-heartbeat"
        assert beacon.path.stat().st_mode & 0o777 == 0o640, "readable by who reads the database"
        _fill(small_fs / "filler")
        with pytest.raises(OSError):
            (small_fs / "new-file").write_bytes(b"x" * 8192)
        error = "database sms.db: cannot store a batch: the disk is full: free space " * 30
        beacon.write({"heartbeat_at": 123.0, "pid": 7, "storage_error": error})
    finally:
        beacon.close()
    read = read_heartbeat_file(db)
    assert read["heartbeat_at"] == 123.0 and read["pid"] == 7
    assert read["storage_error"].startswith("database sms.db: cannot store a batch: the disk is")


def test_status_takes_the_newer_heartbeat_file_with_its_storage_failure(tmp_path: Path) -> None:
    import time

    from inbound_mail.service.status import DAEMON_KEY, HEARTBEAT_KEY, HeartbeatFile
    from inbound_mail.store.db import Store

    db = tmp_path / "sms.db"
    now = time.time()
    with Store.open(db) as store:  # the last beat the database could take: 10 minutes ago
        store.set_state(HEARTBEAT_KEY, str(now - 600))
        store.set_state(DAEMON_KEY, json.dumps({"pid": 7, "accounts": []}))
    full = f"database {db}: cannot store a batch: the disk is full: free space on it"
    beacon = HeartbeatFile(db)
    beacon.open()
    beacon.write({"heartbeat_at": now, "pid": 7, "storage_error": full, "stopped_at": None})
    beacon.close()
    result = invoke("--db", str(db), "status")
    assert result.exit_code == 2, result.output
    assert result.output.startswith(
        f"CRITICAL: 1 problem\nCRITICAL database: the daemon cannot write to its database: {full}."
    )
    assert "stopped or hung" not in result.output
    beacon.open()
    beacon.write({"heartbeat_at": now + 1, "pid": 7, "storage_error": None, "stopped_at": now})
    beacon.close()
    stopped = invoke("--db", str(db), "status")
    assert "CRITICAL daemon: daemon stopped at " in stopped.output, stopped.output
