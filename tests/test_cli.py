"""The CLI over a real SQLite file, driven through click's CliRunner."""

from __future__ import annotations

import csv
import io
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from inbound_mail.cli import cli
from inbound_mail.models import dedup_id

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def golden() -> list[dict[str, Any]]:
    return [
        json.loads(p.read_text(encoding="utf-8")) | {"name": p.stem}
        for p in sorted(FIXTURES.glob("*.json"))
    ]


def default_option_records() -> dict[str, dict[str, Any]]:
    """The expected records of every fixture parsed with default options, by SMS id."""
    records = {}
    for case in golden():
        if case["outcome"] == "record" and not case.get("options"):
            r = case["record"]
            records[dedup_id(r["originator"], r["destination"], r["date_time"], r["text"])] = r
    return records


def invoke(*args: str, input: bytes | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "sms.db"


def test_import_three_times_stores_each_sms_once_and_records_every_email(db: Path) -> None:
    for _ in range(3):
        result = invoke("--db", str(db), "import", str(FIXTURES))
        assert result.exit_code == 0, result.output
        assert "imported:" in result.output
    out = invoke("--db", str(db), "messages", "--format", "jsonl").output
    lines = [json.loads(line) for line in out.splitlines()]
    ids = [line["id"] for line in lines]
    assert len(ids) == len(set(ids)), "every SMS once"
    expected = default_option_records()
    assert set(expected) <= set(ids)
    by_id = {line["id"]: line for line in lines}
    for sms_id, record in expected.items():
        for key in ("originator", "destination", "date_time", "received_at", "text", "keyword"):
            assert by_id[sms_id][key] == record[key], (sms_id, key)
    for key in ("id", "originator", "destination", "date_time", "received_at", "text", "keyword"):
        assert key in lines[0]
    assert "imported: 0 read" not in result.output and " 0 new" in result.output
    emails = invoke("--db", str(db), "messages", "--format", "json").output
    assert emails


def test_import_summary_counts(db: Path) -> None:
    first = invoke("--db", str(db), "import", str(FIXTURES)).output
    cases = golden()
    rejected = sum(1 for c in cases if c["outcome"] == "rejected")
    # garbage_bytes.eml has no header block at all: the reader reports it as a
    # file that is not an email, before the parser would skip it.
    skipped = sum(1 for c in cases if c["outcome"] == "skipped" and c["name"] != "garbage_bytes")
    assert f"{rejected} rejected" in first and f"{skipped} skipped" in first
    assert "1 duplicate," in first, "duplicate_a / duplicate_b: one SMS under two Message-IDs"
    second = invoke("--db", str(db), "import", str(FIXTURES)).output
    assert " 0 new" in second


def test_database_is_created_0600(db: Path) -> None:
    invoke("--db", str(db), "import", str(FIXTURES / "plain_qp_crlf.eml"))
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_no_bad_input_raises_out_of_import(db: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.eml").write_bytes(b"\x00\xff" * 1000)
    (junk / "b.eml").write_bytes(b"From: smsin@agiletelecom.com\r\n\r\nFrom: +39\r\n")
    (junk / "c.mbox").write_bytes(b"From x\r\nFrom: smsin@agiletelecom.com\r\n\r\n\xff\xfe")
    result = invoke("--db", str(db), "import", str(junk))
    assert result.exit_code == 0, result.output
    assert "2 rejected" in result.output


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_messages_formats(db: Path, fmt: str) -> None:
    invoke("--db", str(db), "import", str(FIXTURES))
    out = invoke(
        "--db", str(db), "messages", "--format", fmt, "--destination", "+393331234333"
    ).output
    if fmt == "json":
        data = json.loads(out)
        assert data and all(row["destination"] == "+393331234333" for row in data)
    elif fmt == "csv":
        data = list(csv.DictReader(io.StringIO(out)))
        assert data and set(data[0]) >= {"originator", "destination", "text", "id"}
    else:
        assert out.splitlines()[0].split()[:3] == ["received_at", "originator", "destination"]


def test_messages_filters(db: Path) -> None:
    invoke("--db", str(db), "import", str(FIXTURES))
    every = json.loads(invoke("--db", str(db), "messages", "--format", "json").output)
    limited = json.loads(
        invoke("--db", str(db), "messages", "--format", "json", "--limit", "2").output
    )
    assert len(limited) == 2
    newest = max(r["received_at"] for r in every)
    since = json.loads(
        invoke("--db", str(db), "messages", "--format", "json", "--since", newest).output
    )
    assert [r["received_at"] for r in since] == [newest] * len(since) and since
    origin = every[0]["originator"]
    by_origin = json.loads(
        invoke("--db", str(db), "messages", "--format", "json", "--originator", origin).output
    )
    assert by_origin and all(r["originator"] == origin for r in by_origin)


def test_rejects_list_and_show(db: Path) -> None:
    invoke("--db", str(db), "import", str(FIXTURES))
    listed = json.loads(invoke("--db", str(db), "rejects", "--format", "json").output)
    reasons = " ".join(r["reason"] for r in listed)
    assert "Date/Time" in reasons or "date" in reasons.lower()
    shown = invoke("--db", str(db), "rejects", "--show", str(listed[0]["id"]))
    assert shown.exit_code == 0
    assert listed[0]["reason"] in shown.output
    assert "smsin@agiletelecom.com" in shown.output.lower(), "the raw email follows the reason"
    missing = invoke("--db", str(db), "rejects", "--show", "999999")
    assert missing.exit_code == 1 and "no reject with id 999999" in missing.output


def test_parse_prints_the_record_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("parse", str(FIXTURES / "plain_qp_crlf.eml"))
    assert result.exit_code == 0
    record = json.loads(result.output)
    assert record["originator"].startswith("+39") and len(record["id"]) == 64
    assert list(tmp_path.iterdir()) == [], "a dry run writes nothing"


@pytest.mark.parametrize(
    ("fixture", "code", "word"),
    [("noise_newsletter", 3, "skipped"), ("invalid_date_time", 1, "rejected")],
)
def test_parse_exit_codes(fixture: str, code: int, word: str) -> None:
    result = invoke("parse", str(FIXTURES / f"{fixture}.eml"))
    assert result.exit_code == code and result.output.startswith(f"{word}: ")


def test_config_errors_are_one_clear_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[parse]\ntimezone = 5\n")
    result = invoke("--config", str(config), "messages")
    assert result.exit_code == 1
    expected = "parse.timezone: expected an IANA time zone such as Europe/Rome, got an integer 5"
    assert result.output.strip() == f"Error: {config}: {expected}"


def test_replay_names_unknown_sink(db: Path) -> None:
    result = invoke("--db", str(db), "replay", "--sink", "nope")
    assert result.exit_code == 1 and "no sink named 'nope'" in result.output


def test_python_dash_m_works() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "inbound_mail", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.startswith("inbound-mail, version")


def test_importing_one_mbox_three_times_stores_each_sms_once(db: Path, tmp_path: Path) -> None:
    from inbound_mail.testing.emails import build_provider_email

    mbox = tmp_path / "export.mbox"
    with mbox.open("wb") as out:
        for n in range(50):
            raw = build_provider_email(
                f"+39347{n:07d}", "+393331234333", "20240501120000", f"m {n}"
            )
            out.write(
                b"From MAILER-DAEMON Wed May  1 12:00:00 2024\n" + raw.replace(b"\r\n", b"\n")
            )
            out.write(b"\n")
    for _ in range(3):
        assert invoke("--db", str(db), "import", str(mbox)).exit_code == 0
    messages = json.loads(invoke("--db", str(db), "messages", "--format", "json").output)
    assert sorted(m["text"] for m in messages) == sorted(f"m {n}" for n in range(50))
    import sqlite3

    with sqlite3.connect(db) as conn:
        (emails,) = conn.execute("SELECT count(*) FROM emails").fetchone()
    assert emails == 50, "each source email recorded once, however often it is imported"
