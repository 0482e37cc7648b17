"""Build emails the way Agile Telecom sends them, for tests, benchmarks and fault injection.

:func:`build_provider_email` formats the bytes directly (no :mod:`email` object
model), so that generating 100,000 emails takes seconds.  Every layout the
parser accepts can be produced: each label style, CRLF or LF, each transfer
encoding, text/plain, HTML-only and multipart/alternative, any charset, and a
declared charset that differs from the real one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import html as html_lib
from dataclasses import dataclass
from datetime import datetime
from email.header import Header
from email.utils import format_datetime, formataddr
from typing import Literal
from zoneinfo import ZoneInfo

__all__ = [
    "LABEL_STYLES",
    "PROVIDER_SENDER",
    "SUBJECT",
    "Encoding",
    "LabelStyle",
    "build_provider_email",
]

PROVIDER_SENDER = "smsin@agiletelecom.com"
SUBJECT = "Agile Telecom -- SMS received"

Encoding = Literal["quoted-printable", "base64", "8bit", "7bit"]
LabelStyle = Literal["colon", "tight", "equals", "tab", "upper", "lower", "text", "mixed"]

# (From, To, Date/Time, Body labels), separator written between label and value.
LABEL_STYLES: dict[str, tuple[tuple[str, str, str, str], str]] = {
    "colon": (("From", "To", "Date/Time", "Body"), ": "),
    "tight": (("From", "To", "Date/Time", "Body"), ":"),
    "equals": (("From", "To", "Date/Time", "Body"), " = "),
    "tab": (("From", "To", "Date/Time", "Body"), ":\t"),
    "upper": (("FROM", "TO", "DATE/TIME", "BODY"), ": "),
    "lower": (("from", "to", "date/time", "body"), ": "),
    "text": (("From", "To", "Date/Time", "Text"), ": "),
    "mixed": (("fRoM", "tO", "Date / Time", "TeXt"), "\t=  "),
}

_ROME = ZoneInfo("Europe/Rome")
_FALLBACK_DATE = "Mon, 25 May 2015 15:46:01 +0200"
_BR = "<br>\n"


def build_provider_email(
    originator: str,
    destination: str,
    date_time: str,
    text: str,
    *,
    encoding: Encoding = "quoted-printable",
    html: bool = False,
    alternative: bool = False,
    charset: str = "utf-8",
    declared_charset: str | None = None,
    message_id: str | None = None,
    sender: str = PROVIDER_SENDER,
    display_name: str = "Agile Telecom",
    label_style: LabelStyle = "colon",
    crlf: bool = True,
    date: str | None = None,
    subject: str = SUBJECT,
    recipient: str = "sms@example.it",
    greeting: str | None = None,
) -> bytes:
    """One provider email as raw bytes.

    ``text`` may hold any line endings; they become the email's (CRLF, or LF
    with ``crlf=False``).  ``charset`` encodes the body (a character it cannot
    encode raises UnicodeEncodeError); ``declared_charset`` is what the headers
    claim, by default the same.  ``html`` sends an HTML-only body,
    ``alternative`` a multipart/alternative with a plain and an HTML part.
    ``message_id`` defaults to one derived from the four fields, ``date`` to
    the Date/Time read in Europe/Rome.  ``greeting`` is a line before the fields.
    """
    eol = "\r\n" if crlf else "\n"
    labels, separator = LABEL_STYLES[label_style]
    values = (originator, destination, date_time)
    lines = [f"{label}{separator}{value}" for label, value in zip(labels, values, strict=False)]
    text_lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if message_id is None:
        message_id = _default_message_id(originator, destination, date_time, text)
    headers = [
        f"Return-Path: <{sender}>",
        f"Date: {date or _default_date(date_time)}",
        f"From: {formataddr((display_name, sender)) if display_name else sender}",
        f"To: {recipient}",
        f"Subject: {_encode_header(subject)}",
        f"Message-ID: {message_id}",
        "MIME-Version: 1.0",
    ]
    fmt = _Format(encoding, charset, declared_charset or charset, eol)
    plain = _plain_body(lines, labels[3] + separator, text_lines, greeting)
    if alternative:
        rich = _html_body(lines, labels[3] + separator, text_lines, greeting)
        body = _alternative(plain, rich, fmt, message_id)
    elif html:
        body = _part("html", _html_body(lines, labels[3] + separator, text_lines, greeting), fmt)
    else:
        body = _part("plain", plain, fmt)
    return (eol.join(headers) + eol).encode("utf-8") + body


def _plain_body(lines: list[str], text_label: str, text: list[str], greeting: str | None) -> str:
    head = [greeting, ""] if greeting is not None else []
    return "\n".join([*head, *lines, text_label + text[0], *text[1:]]) + "\n"


def _html_body(lines: list[str], text_label: str, text: list[str], greeting: str | None) -> str:
    escaped = [html_lib.escape(line, quote=False) for line in text]
    fields = [html_lib.escape(line, quote=False) for line in lines]
    head = f"<p>{html_lib.escape(greeting, quote=False)}</p>\n" if greeting is not None else ""
    label = html_lib.escape(text_label, quote=False)
    return (
        '<html><head><meta charset="utf-8"><title>SMS received</title>'
        "<style>p { font-family: sans-serif; }</style></head>\n<body>\n"
        f"{head}<p>{_BR.join(fields)}{_BR}{label}{_BR.join(escaped)}</p>\n</body></html>\n"
    )


@dataclass(frozen=True, slots=True)
class _Format:
    encoding: Encoding
    charset: str
    declared: str
    eol: str


def _part(subtype: str, source: str, fmt: _Format) -> bytes:
    """Content headers, blank line and encoded body of one text part."""
    eol = fmt.eol
    data = source.replace("\n", eol).encode(fmt.charset)
    if fmt.encoding == "base64":
        encoded = base64.encodebytes(data).replace(b"\n", eol.encode("ascii"))
    elif fmt.encoding == "quoted-printable":
        encoded = binascii.b2a_qp(data, istext=True)  # keeps the data's line breaks
    else:
        encoded = data
    head = (
        f'Content-Type: text/{subtype}; charset="{fmt.declared}"{eol}'
        f"Content-Transfer-Encoding: {fmt.encoding}{eol}{eol}"
    )
    return head.encode("ascii") + encoded


def _alternative(plain: str, rich: str, fmt: _Format, message_id: str) -> bytes:
    boundary = "=_alt_" + hashlib.blake2b(message_id.encode(), digest_size=8).hexdigest()
    eol = fmt.eol
    head = f'Content-Type: multipart/alternative; boundary="{boundary}"{eol}{eol}'
    preamble = f"This is a multi-part message in MIME format.{eol}--{boundary}{eol}"
    return (
        (head + preamble).encode("ascii")
        + _part("plain", plain, fmt)
        + f"{eol}--{boundary}{eol}".encode("ascii")
        + _part("html", rich, fmt)
        + f"{eol}--{boundary}--{eol}".encode("ascii")
    )


def _encode_header(value: str) -> str:
    if value.isascii():
        return value
    return Header(value, "utf-8").encode()


def _default_message_id(originator: str, destination: str, date_time: str, text: str) -> str:
    seed = "\x00".join((originator, destination, date_time, text)).encode("utf-8", "surrogatepass")
    return f"<{hashlib.blake2b(seed, digest_size=12).hexdigest()}@smsin.agiletelecom.com>"


def _default_date(date_time: str) -> str:
    """The Date header: the Date/Time read in the provider's zone."""
    try:
        moment = datetime.strptime(date_time, "%Y%m%d%H%M%S").replace(tzinfo=_ROME)
    except ValueError:
        return _FALLBACK_DATE
    return format_datetime(moment)
