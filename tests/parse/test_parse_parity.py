"""``parse_email`` reads Subject and Date with mail-parser's own decoders instead of
building a whole ``MailParser``: the two must give the same values, on every
fixture, every bomb and a set of awkward headers."""

from __future__ import annotations

import email
import email.message
from datetime import UTC, datetime

import mailparser
import pytest

from inbound_mail.models import Rejected, SmsRecord
from inbound_mail.parse.charsets import neutralise
from inbound_mail.parse.message import parse_email
from inbound_mail.testing.emails import build_provider_email
from testsupport.bombs import bombs

from helpers import REPO

PROVIDER = "smsin@agiletelecom.com"


def _reference(raw: bytes) -> tuple[str | None, str | None] | None:
    """(subject, email_date) as the full ``MailParser`` reads them, or None when
    it cannot build one (the parser then rejects for its own reason)."""
    try:
        message = email.message_from_bytes(raw)
        neutralise(message)
        mail = mailparser.MailParser(message)
    except Exception:
        return None
    subject = str(mail.subject).strip() or None
    value = mail.date
    email_date: str | None = None
    if isinstance(value, datetime):
        try:
            moment = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
            email_date = moment.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"
        except (OverflowError, ValueError):
            email_date = None
    if email_date is None:
        date = message.get("Date")
        email_date = str(date).strip() or None if date is not None else None
    return subject, email_date


def _sms(**headers: str) -> bytes:
    raw = build_provider_email("+393301234567", "+393331234333", "20150525154559", "Ciao")
    head, _, body = raw.partition(b"\r\n\r\n")
    kept = [
        line
        for line in head.split(b"\r\n")
        if line.split(b":", 1)[0].lower() not in {h.lower().encode() for h in headers}
    ]
    extra = [f"{name.replace('_', '-')}: {value}".encode() for name, value in headers.items()]
    return b"\r\n".join(kept + extra) + b"\r\n\r\n" + body


AWKWARD = {
    "encoded_utf8_b": _sms(Subject="=?utf-8?b?U01TIOKCrCByaWNldnV0bw==?="),
    "encoded_q_latin1": _sms(Subject="=?iso-8859-1?q?Caf=E9_SMS?="),
    "encoded_unknown_charset": _sms(Subject="=?x-unknown?q?abc?="),
    "encoded_broken": _sms(Subject="=?utf-8?b?!!!?="),
    "folded": _sms(Subject="Agile Telecom --\r\n SMS received"),
    "empty_subject": _sms(Subject=""),
    "date_obsolete_zone": _sms(Date="Mon, 25 May 2015 15:45:59 EST"),
    "date_minus_zero": _sms(Date="25 May 2015 15:45:59 -0000"),
    "date_two_digit_year": _sms(Date="Mon, 25 May 15 15:45:59 +0200"),
    "date_leap_second": _sms(Date="Wed, 31 Dec 2008 23:59:60 +0000"),
    "date_wrong_weekday": _sms(Date="Fri, 25 May 2015 15:45:59 +0200"),
    "date_garbage": _sms(Date="yesterday, around noon"),
    "date_far_future": _sms(Date="Fri, 31 Dec 9999 23:59:59 -2359"),
    "date_absent": _sms(Date=""),
}


def _corpus() -> dict[str, bytes]:
    corpus = {
        f"fixture_{p.stem}": p.read_bytes() for p in sorted((REPO / "fixtures").glob("*.eml"))
    }
    corpus.update({f"bomb_{name}": raw for name, (raw, _) in bombs().items()})
    corpus.update({f"awkward_{name}": raw for name, raw in AWKWARD.items()})
    raw = AWKWARD["encoded_utf8_b"]
    corpus["two_subjects"] = raw.replace(b"\r\n\r\n", b"\r\nSubject: second\r\n\r\n", 1)
    corpus["two_dates"] = raw.replace(
        b"\r\n\r\n", b"\r\nDate: Tue, 26 May 2015 10:00:00 +0000\r\n\r\n", 1
    )
    corpus["eight_bit_subject"] = raw.replace(
        b"Subject: =?utf-8?b?U01TIOKCrCByaWNldnV0bw==?=", "Subject: Caffè €".encode(), 1
    )
    return corpus


CORPUS = _corpus()


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_subject_and_date_are_mail_parsers(name: str) -> None:
    raw = CORPUS[name]
    outcome = parse_email(raw)
    if isinstance(outcome, Rejected) and outcome.code == "over_limit":
        return  # refused before any header is decoded: no subject to compare
    if not isinstance(outcome, SmsRecord | Rejected) or outcome.sender != PROVIDER:
        return  # skipped mail keeps no subject or date
    reference = _reference(raw)
    if reference is None:
        assert isinstance(outcome, Rejected)
        return
    subject, email_date = reference
    assert outcome.subject == subject
    if isinstance(outcome, SmsRecord):
        assert outcome.email_date == email_date


def test_the_awkward_set_parses_as_sms() -> None:
    """The awkward headers change nothing but the metadata: each is still an SMS."""
    for name, raw in AWKWARD.items():
        assert isinstance(parse_email(raw), SmsRecord), name
