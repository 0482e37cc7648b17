"""Property: whatever the provider sends, in whatever layout, parses back to the same SMS."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inbound_mail.models import SmsRecord
from inbound_mail.parse.message import DEFAULT_OPTIONS, normalise_text, parse_email, to_utc_iso
from inbound_mail.testing.emails import LABEL_STYLES, build_provider_email

NUMBERS = st.from_regex(r"\+?[0-9]{6,15}", fullmatch=True)
SENDER_IDS = st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,10}", fullmatch=True)
DATE_TIMES = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2099, 12, 31)).map(
    lambda moment: moment.strftime("%Y%m%d%H%M%S")
)
# Any character but lone surrogates (not encodable) and NUL (a corrupt body, rejected).
CHARS = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
LINES = st.one_of(
    st.text(CHARS, max_size=40),
    st.sampled_from(
        ["To: the team", "From: Marco", "Body: again", "TEXT = x", "Date/Time: 20200101000000"]
    ),
    st.sampled_from(["", "  ", "\t", "   indented", "a  b\t\tc  "]),
    st.text(st.sampled_from("ab😀€ \t"), max_size=10),
)
TEXTS = st.tuples(
    st.lists(LINES, max_size=6), st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=6)
).map(lambda parts: "".join(line + end for line, end in zip(*parts, strict=False)).rstrip("\r\n"))
LAYOUTS = st.fixed_dictionaries(
    {
        "encoding": st.sampled_from(["quoted-printable", "base64", "8bit"]),
        "label_style": st.sampled_from(sorted(LABEL_STYLES)),
        "crlf": st.booleans(),
        "variant": st.sampled_from(["plain", "html", "alternative"]),
        "charset": st.sampled_from(["utf-8", "iso-8859-1", "cp1252"]),
    }
)


def _charset_for(text: str, wanted: str) -> str:
    """``wanted`` if it can carry ``text`` unchanged, else UTF-8.

    ISO-8859-1 is read as Windows-1252 (documented), so its C1 range does not round-trip.
    """
    try:
        text.encode(wanted)
    except UnicodeEncodeError:
        return "utf-8"
    if wanted == "iso-8859-1" and any("\x80" <= c <= "\x9f" for c in text):
        return "utf-8"
    return wanted


@settings(max_examples=200, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(
    originator=st.one_of(NUMBERS, SENDER_IDS),
    destination=NUMBERS,
    date_time=DATE_TIMES,
    text=TEXTS,
    layout=LAYOUTS,
)
def test_built_email_parses_back(
    originator: str, destination: str, date_time: str, text: str, layout: dict[str, Any]
) -> None:
    variant = layout["variant"]
    raw = build_provider_email(
        originator,
        destination,
        date_time,
        text,
        encoding=layout["encoding"],
        label_style=layout["label_style"],
        crlf=bool(layout["crlf"]),
        html=variant == "html",
        alternative=variant == "alternative",
        charset=_charset_for(text, layout["charset"]),
    )
    result = parse_email(raw)
    assert isinstance(result, SmsRecord), result
    assert result.originator == originator
    assert result.destination == destination
    assert result.date_time == date_time
    assert result.received_at == to_utc_iso(date_time, DEFAULT_OPTIONS.timezone)
    assert result.text == normalise_text(text)


@settings(max_examples=200, deadline=1000)
@given(text=TEXTS)
def test_normalise_text_is_idempotent(text: str) -> None:
    once = normalise_text(text)
    assert normalise_text(once) == once
    assert "\r" not in once
    assert once == once.strip("\n")
