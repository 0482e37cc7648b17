"""The CLI over a real SQLite file, driven through click's CliRunner."""

from __future__ import annotations

import contextlib
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

from helpers import unchecked_config

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
# attachment_10mb.eml is over import's default --max-size (1 MiB): let every fixture parse.
WHOLE = ("--max-size", str(16 * 1024 * 1024))


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


@pytest.fixture(autouse=True)
def _unchecked(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The golden fixtures are unsigned: these CLI tests run with authenticate = "off"
    (tests/helpers.py says why); trust has its own tests (test_trust*.py)."""
    config = unchecked_config(tmp_path_factory.mktemp("unchecked"))
    monkeypatch.setenv("INBOUND_MAIL_CONFIG", str(config))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "sms.db"


def test_import_three_times_stores_each_sms_once_and_records_every_email(db: Path) -> None:
    for _ in range(3):
        result = invoke("--db", str(db), "import", *WHOLE, str(FIXTURES))
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
    first = invoke("--db", str(db), "import", *WHOLE, str(FIXTURES)).output
    cases = golden()
    rejected = sum(1 for c in cases if c["outcome"] == "rejected")
    # garbage_bytes.eml has no header block at all: the reader reports it as a
    # file that is not an email, before the parser would skip it.
    skipped = sum(1 for c in cases if c["outcome"] == "skipped" and c["name"] != "garbage_bytes")
    assert f"{rejected} rejected" in first and f"{skipped} skipped" in first
    assert "1 duplicate," in first, "duplicate_a / duplicate_b: one SMS under two Message-IDs"
    second = invoke("--db", str(db), "import", *WHOLE, str(FIXTURES)).output
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
    invoke("--db", str(db), "import", *WHOLE, str(FIXTURES))
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
    invoke("--db", str(db), "import", *WHOLE, str(FIXTURES))
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
    invoke("--db", str(db), "import", *WHOLE, str(FIXTURES))
    listed = json.loads(invoke("--db", str(db), "rejects", "--format", "json").output)
    reasons = " ".join(r["reason"] for r in listed)
    assert "Date/Time" in reasons or "date" in reasons.lower()
    shown = invoke("--db", str(db), "rejects", "--show", str(listed[0]["id"]))
    assert shown.exit_code == 0
    assert listed[0]["reason"] in shown.output
    assert "smsin@agiletelecom.com" in shown.output.lower(), "the raw email follows the reason"
    missing = invoke("--db", str(db), "rejects", "--show", "999999")
    assert missing.exit_code == 1 and "no reject with id 999999" in missing.output


def test_rejects_code_filters_on_the_stored_code(db: Path) -> None:
    invoke("--db", str(db), "import", *WHOLE, str(FIXTURES))
    listed = json.loads(invoke("--db", str(db), "rejects", "--format", "json").output)
    codes = sorted({r["code"] for r in listed})
    assert len(codes) >= 2, codes  # the fixtures reject for more than one reason
    first, rest = codes[0], codes[1:]
    only = json.loads(
        invoke("--db", str(db), "rejects", "--code", first, "--format", "json").output
    )
    assert only == [r for r in listed if r["code"] == first]
    both = invoke("--db", str(db), "rejects", "--code", ",".join(rest), "--code", first,
                  "--format", "json")  # fmt: skip
    assert json.loads(both.output) == listed
    none = invoke("--db", str(db), "rejects", "--code", "parser_crash", "--format", "json")
    assert json.loads(none.output) == []


def test_rejects_code_refuses_an_unknown_code_and_lists_the_valid_ones(db: Path) -> None:
    result = invoke("--db", str(db), "rejects", "--code", "missing_field,no_such_code")
    assert result.exit_code == 2
    assert "unknown reject code 'no_such_code'" in result.output
    assert "missing_field" in result.output and "invalid_date_time" in result.output


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


def test_import_applies_max_size_headers_kept_body_not_parsed(db: Path, tmp_path: Path) -> None:
    """A 40 MB email used 382 MB: ``import`` now has IMAP's ``max_size`` rule."""
    from inbound_mail.testing.emails import build_provider_email

    raw = build_provider_email("+393471234567", "+393331234333", "20240501120000", "é" * 200_000)
    assert len(raw) > 1024 * 1024
    big = tmp_path / "big.eml"
    big.write_bytes(raw)
    other = tmp_path / "other.eml"
    other.write_bytes(raw.replace(b"smsin@agiletelecom.com", b"someone@example.com"))
    result = invoke("--db", str(db), "import", str(big), str(other))
    assert "1 rejected" in result.output and "1 skipped" in result.output
    [reject] = json.loads(invoke("--db", str(db), "rejects", "--format", "json").output)
    assert "over --max-size = 1048576" in reject["reason"]
    shown = invoke("--db", str(db), "rejects", "--show", str(reject["id"])).output
    assert "Subject: Agile Telecom" in shown and "Body:" not in shown  # headers only
    copy = tmp_path / "again" / "big.eml"
    copy.parent.mkdir()
    copy.write_bytes(raw)
    result = invoke("--db", str(db), "import", "--max-size", str(4 * 1024 * 1024), str(copy))
    assert "1 new" in result.output
    messages = json.loads(invoke("--db", str(db), "messages", "--format", "json").output)
    assert [len(m["text"]) for m in messages] == [200_000]


# -- output an SMS text cannot subvert -------------------------------------------------------
HOSTILE = "\x1b[1A\x1b[2Kgotcha\x1b]0;pwned\x07 \u202eevil\x9b31m"


def _store_texts(db: Path, texts: list[str], *, reject_raw: bytes | None = None) -> None:
    from inbound_mail.models import EmailOrigin, Rejected, SmsRecord
    from inbound_mail.store.db import Store
    from inbound_mail.store.rows import IngestItem

    items = [
        IngestItem(
            b"raw",
            SmsRecord("+393331234567", "+393331234333", f"202405011200{n:02d}",
                      f"2024-05-01T10:00:{n:02d}Z", text),
            EmailOrigin(kind="eml", path="x", key=str(n)),
        )
        for n, text in enumerate(texts)
    ]  # fmt: skip
    if reject_raw is not None:
        origin = EmailOrigin(kind="eml", path="r", key="r")
        items.append(IngestItem(reject_raw, Rejected(reason=f"bad {HOSTILE}"), origin))
    with Store.open(db) as store:
        result = store.ingest(items, route=lambda r: ["hook"])
        for n, delivery in enumerate(store.deliveries(sink="hook")):
            store.record_attempt(
                delivery["id"], outcome="dead", started_at=0.0, duration=0.1,
                error=f"HTTP 400: {HOSTILE}" if n == 0 else None,
            )  # fmt: skip
    assert len(result.new) == len(texts)


def test_csv_neutralises_formulas_keeps_phone_numbers_and_raw_keeps_everything(
    db: Path,
) -> None:
    texts = ['=HYPERLINK("http://x.example","click")', "+1+cmd|' /C calc'!A0", "-2+3",
             "@SUM(1+1)", "-2", "plain"]  # fmt: skip
    _store_texts(db, texts)
    out = invoke("--db", str(db), "messages", "--format", "csv").output
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["text"] for r in rows] == [
        "'" + texts[0], "'" + texts[1], "'-2+3", "'@SUM(1+1)", "-2", "plain"
    ]  # fmt: skip
    assert {r["originator"] for r in rows} == {"+393331234567"}  # a phone number, untouched
    raw = invoke("--db", str(db), "messages", "--format", "csv", "--raw").output
    assert [r["text"] for r in csv.DictReader(io.StringIO(raw))] == texts


def test_tables_escape_control_characters_and_json_stays_exact(db: Path) -> None:
    _store_texts(db, [HOSTILE])
    for args in (("messages",), ("deliveries",), ("rejects",)):
        table = invoke("--db", str(db), *args).output
        assert "\x1b" not in table and "\x07" not in table and "\u202e" not in table, args
        assert "\x9b" not in table, args
    table = invoke("--db", str(db), "messages").output
    assert "\\x1b[1A\\x1b[2Kgotcha\\x1b]0;pwned\\x07 \\u202eevil" in table
    assert "\\x1b[1A" in invoke("--db", str(db), "deliveries").output
    [message] = json.loads(invoke("--db", str(db), "messages", "--format", "json").output)
    assert message["text"] == HOSTILE
    [line] = invoke("--db", str(db), "messages", "--format", "jsonl").output.splitlines()
    assert json.loads(line)["text"] == HOSTILE
    assert "\x1b" in invoke("--db", str(db), "messages", "--raw").output


def test_on_a_terminal_every_format_and_rejects_show_escape_control_characters(
    db: Path,
) -> None:
    """Run the CLI on a real pseudo-terminal: ESC sequences would act on it."""
    import os
    import pty
    import subprocess
    import sys

    raw_email = b"From: smsin@agiletelecom.com\r\nSubject: x\r\n\r\nBody: \x1b]0;pwned\x07\xff\r\n"
    _store_texts(db, [HOSTILE], reject_raw=raw_email)

    def on_tty(*args: str) -> bytes:
        master, slave = pty.openpty()
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "inbound_mail", "--db", str(db), *args],
                stdout=slave, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                timeout=60, check=True,
            )  # fmt: skip
            assert proc.returncode == 0
            os.close(slave)
            chunks = []
            while True:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the other side is closed and drained
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(master)
            if slave >= 0:
                with contextlib.suppress(OSError):
                    os.close(slave)

    for fmt in ("jsonl", "json", "csv", "table"):
        shown = on_tty("messages", "--format", fmt)
        assert b"gotcha" in shown, fmt
        assert b"\x1b" not in shown and b"\x07" not in shown, fmt
        assert "\u202e".encode() not in shown and "\x9b".encode() not in shown, fmt
    [line] = on_tty("messages", "--format", "jsonl").decode().splitlines()
    assert json.loads(line)["text"] == HOSTILE  # still exact: escapes JSON decodes
    [reject] = json.loads(invoke("--db", str(db), "rejects", "--format", "json").output)
    shown = on_tty("rejects", "--show", str(reject["id"]))
    assert b"\x1b" not in shown and b"\x07" not in shown
    assert b"Body: \\x1b]0;pwned\\x07\\xff" in shown
    piped = invoke("--db", str(db), "rejects", "--show", str(reject["id"])).stdout_bytes
    assert piped.endswith(raw_email)  # to a pipe: the exact bytes
