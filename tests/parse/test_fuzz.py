"""Fuzzing the parser: any bytes end as SmsRecord | Skipped | Rejected, fast, never an exception.

The default run takes about ten seconds.  For a longer run on demand::

    INBOUND_MAIL_FUZZ_EXAMPLES=20000 .venv/bin/pytest tests/test_fuzz.py
"""

from __future__ import annotations

import os
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inbound_mail.models import ParseOutcome, Rejected, Skipped, SmsRecord
from inbound_mail.parse.message import normalise_text, parse_email
from inbound_mail.testing.emails import build_provider_email

from helpers import REPO

FIXTURES = REPO / "fixtures"
# The 10 MB fixture is left out: copying it per example would be the whole budget.
SEEDS = [p.read_bytes() for p in sorted(FIXTURES.glob("*.eml")) if p.stat().st_size < 100_000]
EXAMPLES = int(os.environ.get("INBOUND_MAIL_FUZZ_EXAMPLES", "0")) or None
FUZZ = settings(
    max_examples=EXAMPLES or 2500,
    deadline=1000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

PROVIDER_HEAD = b"From: smsin@agiletelecom.com\r\nSubject: x\r\n\r\n"
HEADER_LIKE = [
    b"From: smsin@agiletelecom.com\r\n",
    b'From: "smsin@agiletelecom.com" <x@y.z>\r\n',
    b"From: a@b.c, smsin@agiletelecom.com\r\n",
    b'Content-Type: multipart/mixed; boundary="x"\r\n',
    b"Content-Type: multipart/alternative\r\n",
    b"Content-Type: message/rfc822\r\n",
    b"Content-Type: text/html; charset=utf-7\r\n",
    b"Content-Type: text/plain; charset*=utf-8''%FF%FE\r\n",
    b"Content-Type: text/plain; charset=base64\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"Content-Transfer-Encoding: x-uuencode\r\n",
    b"Content-Disposition: attachment; filename=x\r\n",
    b"Subject: =?utf-8?b?invalid===?=\r\n",
    b"Date: Mon, 99 Foo 2015 99:99:99 +9999\r\n",
    b"--x\r\n",
    b"--x--\r\n",
    b"\r\n",
    b"Body: \r\n",
    b"Date/Time: 99999999999999\r\n",
    b"To: =\r\n",
    b"<head><style>",
    b"<br>",
    b"=\r\n",
    b"=FF=00",
    b"\x00",
    b"\xff\xfe\xfd",
]


def _check(raw: bytes) -> ParseOutcome:
    # What one email may cost in time is measured in benchmarks/bomb_bench.py, not here.
    result = parse_email(raw)
    assert isinstance(result, SmsRecord | Skipped | Rejected)
    if isinstance(result, SmsRecord):
        assert re.fullmatch(r"[0-9]{14}", result.date_time)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", result.received_at)
        assert result.originator == result.originator.strip() != ""
        assert normalise_text(result.text) == result.text
        assert "\x00" not in result.text
        result.text.encode("utf-8")  # printable downstream: no lone surrogates
    else:
        assert result.reason
    return result


@st.composite
def mutated(draw: st.DrawFn, seeds: st.SearchStrategy[bytes]) -> bytes:
    """A seed email with a few byte flips, insertions of header-like lines and a cut."""
    data = bytearray(draw(seeds))
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["flip", "insert", "delete"]))
        at = draw(st.integers(0, len(data)))
        if kind == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from(HEADER_LIKE) | st.binary(max_size=8))
        else:
            del data[at : at + draw(st.integers(1, 64))]
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data))) :]
    return bytes(data)


BUILT = st.builds(
    build_provider_email,
    st.text(max_size=16),
    st.text(max_size=16),
    st.text(st.sampled_from("0123456789"), min_size=13, max_size=15),
    st.text(max_size=60).map(lambda t: t.encode("utf-8", "replace").decode("utf-8")),
    encoding=st.sampled_from(["quoted-printable", "base64", "8bit"]),
    html=st.booleans(),
    alternative=st.booleans(),
    crlf=st.booleans(),
)


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(raw: bytes) -> None:
    _check(raw)


@FUZZ
@given(st.binary(max_size=1024).map(lambda b: PROVIDER_HEAD + b))
def test_random_body_from_the_provider(raw: bytes) -> None:
    assert not isinstance(_check(raw), Skipped)


@FUZZ
@given(mutated(st.sampled_from(SEEDS)))
def test_mutated_fixtures(raw: bytes) -> None:
    _check(raw)


@FUZZ
@given(mutated(BUILT))
def test_mutated_built_emails(raw: bytes) -> None:
    _check(raw)


def test_big_fixture_cut_anywhere() -> None:
    big = (FIXTURES / "attachment_10mb.eml").read_bytes()
    for cut in (0, 100, 600, 900, len(big) // 2, len(big) - 10):
        _check(big[:cut])
