"""Operator-facing CLI behaviour: read-only commands, ``status`` exit codes, ``run``
without accounts, ``import`` robustness and progress, ``parse`` on an mbox, the table."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from inbound_mail.cli import cli
from inbound_mail.testing.emails import build_provider_email

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
NUMBER = "+393331234333"


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


def test_read_commands_work_on_a_database_the_user_cannot_write(small_fs: Path) -> None:
    db = small_fs / "sms.db"
    assert invoke("--db", str(db), "import", str(FIXTURES)).exit_code == 0
    expected = invoke("--db", str(db), "messages", "--format", "json").output
    result = _mount(["-o", "remount,ro", str(small_fs)])
    assert result.returncode == 0, result.stderr
    with pytest.raises(OSError):  # even root cannot write there now
        (small_fs / "probe").write_text("x")
    assert invoke("--db", str(db), "messages", "--format", "json").output == expected
    rejects = invoke("--db", str(db), "rejects", "--format", "json")
    assert rejects.exit_code == 0 and json.loads(rejects.output), rejects.output
    deliveries = invoke("--db", str(db), "deliveries")
    assert deliveries.exit_code == 0, deliveries.output
    status = invoke("--db", str(db), "status")
    assert status.exit_code == 2 and "no heartbeat" in status.output, status.output


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
