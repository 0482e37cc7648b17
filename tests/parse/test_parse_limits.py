"""The gate before the full parse (issue 11 item 1): bombs are rejected or skipped,
only real mail charsets are decoded.  Outcomes only: CPU time is in benchmarks/."""

from __future__ import annotations

import email
import email.message
import threading
from pathlib import Path
from typing import Any

import pytest

from inbound_mail.models import Rejected, Skipped, SmsRecord, reject_code_for
from inbound_mail.parse.charsets import UNKNOWN, codec_for, neutralise
from inbound_mail.parse.limits import (
    MAX_ENCODED_WORDS,
    MAX_HEADER_FIELDS,
    MAX_MIME_PARAMS,
    MAX_MIME_PARTS,
    check_structure,
    scan_headers,
)
from inbound_mail.parse.message import DEFAULT_OPTIONS, parse_email
from inbound_mail.service.metrics import reject_category
from inbound_mail.sources.imap.worker import AccountWorker
from inbound_mail.sources.inflight import CRASH_REASON
from inbound_mail.store.db import Store
from inbound_mail.testing.emails import build_provider_email
from testsupport.bombs import BUDGET, bombs
from testsupport.mailbox import Mailbox

CORPUS = bombs()


def sms(text: str = "hi", **kwargs: Any) -> bytes:
    return build_provider_email("+393331234567", "+393339876543", "20240102030405", text, **kwargs)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_each_bomb_has_its_outcome(name: str) -> None:
    raw, expected = CORPUS[name]
    assert len(raw) <= BUDGET
    outcome = parse_email(raw)
    assert type(outcome).__name__ == expected, getattr(outcome, "reason", outcome)
    if isinstance(outcome, Rejected):
        assert outcome.sender == "smsin@agiletelecom.com"
        assert outcome.message_id == "<bomb@smsin.agiletelecom.com>"
    if name.startswith("other_"):
        assert isinstance(outcome, Skipped)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("ours_encoded_words_subject", "header block is"),
        ("ours_subject_words_64k", "header field 'Subject'"),
        ("ours_spread_words_64k", f"at most {MAX_ENCODED_WORDS}"),
        ("ours_content_type_params_64k", f"parameters; at most {MAX_MIME_PARAMS}"),
        ("ours_to_headers_64k", f"header fields; at most {MAX_HEADER_FIELDS}"),
        ("ours_mime_parts", f"over {MAX_MIME_PARTS} parts"),
        ("ours_deep_nesting", "MIME structure"),
        ("ours_from_addresses", "From header is"),
    ],
)
def test_reasons_name_the_limit(name: str, words: str) -> None:
    outcome = parse_email(CORPUS[name][0])
    assert isinstance(outcome, Rejected | Skipped)
    assert words in outcome.reason


def test_stranger_skip_reason_is_unchanged_by_the_gate() -> None:
    outcome = parse_email(CORPUS["other_content_type_params_64k"][0])
    assert isinstance(outcome, Skipped)
    assert outcome.reason.startswith("sender stranger@example.org is not a configured sender")
    assert outcome.sender == "stranger@example.org"
    assert outcome.message_id == "<bomb@smsin.agiletelecom.com>"


def test_a_display_name_naming_the_provider_is_still_reported() -> None:
    raw = sms(sender="evil@example.org", display_name="smsin@agiletelecom.com")
    outcome = parse_email(raw)
    assert isinstance(outcome, Skipped)
    assert "display name naming a configured sender is ignored" in outcome.reason


def test_within_the_limits_is_still_a_record() -> None:
    head = b"Subject: " + b"=?utf-8?q?a?= " * MAX_ENCODED_WORDS + b"\r\n"
    outcome = parse_email(head + sms())
    assert isinstance(outcome, SmsRecord)
    assert outcome.text == "hi"
    assert check_structure(head + sms()) is None


def test_a_huge_header_block_is_never_parsed_but_its_sender_is_read() -> None:
    scan = scan_headers(CORPUS["ours_many_headers"][0])
    assert scan.problem is not None and "header block" in scan.problem
    assert scan.from_values == ["Agile Telecom <smsin@agiletelecom.com>"]
    assert scan.message_id == "<bomb@smsin.agiletelecom.com>"


@pytest.mark.parametrize(
    "label",
    ["punycode", "idna", "rot13", "uu", "zlib", "base64", "bz2", "hex", "utf-7", "x-user-defined",
     "replacement", "undefined", "mbcs", "a" * 100, "", None],
)  # fmt: skip
def test_codecs_that_are_not_charsets_are_unknown(label: str | None) -> None:
    assert codec_for(label) is None


@pytest.mark.parametrize(
    ("label", "codec"),
    [("utf-8", "utf-8"), ("UTF8", "utf-8"), ("iso-8859-1", "iso8859-1"), ("latin1", "iso8859-1"),
     ("windows-1252", "cp1252"), ("us-ascii", "ascii"), ("koi8-r", "koi8-r"), ("gb2312", "gb2312"),
     ("shift_jis", "shift_jis"), ("iso88592", "iso8859-2"), ('"utf-8"', "utf-8"),
     ("utf_8", "utf-8"), ("iso8859_15", "iso8859-15")],
)  # fmt: skip
def test_mail_charsets_keep_their_codec(label: str, codec: str) -> None:
    assert codec_for(label) == codec


@pytest.mark.parametrize("charset", ["rot13", "punycode", "zlib", "uu", "idna"])
def test_a_body_in_a_codec_that_is_not_a_charset_reads_as_an_unknown_charset(charset: str) -> None:
    raw = sms("Caffè", encoding="8bit", declared_charset=charset)
    outcome = parse_email(raw)
    assert isinstance(outcome, SmsRecord)
    assert outcome.text == "Caffè"  # the UTF-8 fallback, as for any unknown charset
    known = parse_email(sms("Caffè", encoding="8bit", declared_charset="no-such-charset"))
    assert isinstance(known, SmsRecord)
    assert known.text == outcome.text


def test_an_encoded_word_in_a_codec_that_is_not_a_charset_is_not_decoded() -> None:
    # rot13 would turn "nopqr" into "abcde": only a real charset may decode a Subject.
    raw = sms(subject="x").replace(b"Subject: x", b"Subject: =?rot13?q?nopqr?=")
    outcome = parse_email(raw)
    assert isinstance(outcome, SmsRecord)
    assert outcome.subject is not None and "abcde" not in outcome.subject
    good = sms(subject="x").replace(b"Subject: x", b"Subject: =?iso-8859-1?q?caff=E8?=")
    record = parse_email(good)
    assert isinstance(record, SmsRecord) and record.subject == "caffè"


def test_neutralise_renames_only_refused_charsets() -> None:
    message = email.message_from_bytes(
        b"Subject: =?punycode?q?a-?= =?utf-8?q?ok?=\r\nX-A: 1\r\nX-B: 2\r\n"
        b"Content-Type: text/plain; charset=punycode\r\n\r\nbody"
    )
    assert neutralise(message)
    assert message.get_param("charset") == UNKNOWN
    assert message["Subject"] == f"=?{UNKNOWN}?q?a-?= =?utf-8?q?ok?="
    assert list(message.keys()) == ["Subject", "X-A", "X-B", "Content-Type"]
    assert not neutralise(message)


def test_limit_and_crash_rejects_have_their_metric_category() -> None:
    for name, (raw, expected) in CORPUS.items():
        outcome = parse_email(raw)
        if expected == "Rejected" and isinstance(outcome, Rejected):
            assert outcome.code in ("over_limit", "body_too_long"), (name, outcome.code)
            category = reject_category(outcome.code)
            assert category in ("over_limit", "body_too_long"), (name, outcome.reason)
    assert reject_code_for(f"{CRASH_REASON}: the process died 2 times") == "parser_crash"
    assert reject_category("parser_crash") == "parser_crash"


def test_oversized_imap_mail_with_a_bomb_header_costs_only_a_header_scan(
    mailbox: Mailbox, tmp_path: Path
) -> None:
    # Over max_size, only the headers are fetched; a From of ~90k addresses
    # (1 MiB of header) is skipped by the bounded scan, the next mail flows.
    mailbox.append(CORPUS["ours_from_addresses"][0])
    mailbox.append(CORPUS["ours_many_headers"][0])
    mailbox.append(sms())
    account = mailbox.account(max_size=100_000, connect_timeout=10.0)
    db = tmp_path / "sms.db"
    worker = AccountWorker(
        account, db_path=db, parse_options=DEFAULT_OPTIONS, stop=threading.Event()
    )
    (result,) = worker.run_once()
    assert (result.tally.new, result.tally.rejected, result.tally.skipped) == (1, 1, 0)
    with Store.open(db) as store:
        (reject,) = list(store.rejects())
    assert "max_size" in reject["reason"]
    assert reject["message_id"] == "<bomb@smsin.agiletelecom.com>"


FROM_VALUES = [
    "Agile Telecom <smsin@agiletelecom.com>",
    "smsin@agiletelecom.com",
    '"smsin@agiletelecom.com" <evil@example.org>',
    "=?utf-8?q?Agile_T=C3=A9l=C3=A9com?= <smsin@agiletelecom.com>",
    "=?punycode?q?a-?= <smsin@agiletelecom.com>",
    "a@b.c, d@e.f",
    "<>",
    "",
    "Name <smsin@agiletelecom.com",
    "smsin@agiletelecom.com (Agile)",
    "\udcff\udcfe <smsin@agiletelecom.com>",
    "Agile\r\n Telecom <x@y.z>",
    "undisclosed-recipients:;",
    "group: a@b.c, d@e.f;",
    "smsin@agiletelecom.com <smsin@agiletelecom.com>",
    # Refused by the strict rule (a lenient scanner reads the provider's address).
    "evil@example.com; smsin@agiletelecom.com",
    "evil@example.com smsin@agiletelecom.com",
    "smsin@agiletelecom.com, smsin@agiletelecom.com",
]


@pytest.mark.parametrize("value", FROM_VALUES)
def test_the_gate_reads_from_as_the_full_parse_does(value: str) -> None:
    # The reference: the full parse's strict From rule, on an ordinary provider
    # email with that From.  The same email over a limit is decided by the gate
    # alone: skipped for the same reason, or (From accepted) an over-limit reject.
    def with_from(raw: bytes) -> bytes:
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = [
            b"From: " + value.encode("utf-8", "surrogateescape")
            if line.startswith(b"From:")
            else line
            for line in head.split(b"\r\n")
        ]
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    plain = with_from(sms())
    pad = b"X-Pad: " + b" ".join([b"=?utf-8?q?x?="] * (MAX_ENCODED_WORDS + 1)) + b"\r\n"
    over = pad + plain
    full, gated = parse_email(plain), parse_email(over)
    if isinstance(full, Skipped):
        assert isinstance(gated, Skipped), (gated, full.reason)
        assert gated.reason == full.reason
    else:
        assert isinstance(full, SmsRecord), full
        assert isinstance(gated, Rejected), gated
        assert gated.code == "over_limit"
        assert gated.sender == full.sender
