"""The gate before the full parse: cheap, linear checks on the raw bytes.

A crafted email of 1 MiB once cost 1-37 s of CPU inside the standard library
and mail-parser (tens of thousands of encoded words, MIME parameters, addresses
or headers; issue 11).  :mod:`inbound_mail.parse.message` therefore asks two things of
this module before the full parse (the :mod:`email` package, then mail-parser's
header decoders):

1. :func:`scan_headers` reads the top header block only, so that the sender can
   be checked first and mail from anyone else costs almost nothing.  A block
   within :data:`MAX_HEADER_BYTES` is read with the standard header parser (the
   same values the full parse sees); a larger one is never parsed, only searched
   for its ``From`` and ``Message-ID`` fields, and the limit it exceeds is the
   ``problem``.
2. :func:`check_structure` runs, for a configured sender's email, over the
   whole email: encoded words, MIME parts and the parameters of
   ``Content-Type`` / ``Content-Disposition`` fields, wherever they are.

Each limit is far above anything a provider email has (one part, about fifteen
header fields, at most a few encoded words in the Subject) and low enough that
an email at the limit still parses in a few milliseconds
(``benchmarks/bomb_bench.py``).  An email over a limit is rejected with the
limit in the reason, its raw bytes kept like any reject's.
"""

from __future__ import annotations

import email.message
import re
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32

__all__ = [
    "MAX_ENCODED_WORDS",
    "MAX_FIELD_BYTES",
    "MAX_FROM_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_HEADER_FIELDS",
    "MAX_MIME_PARAMS",
    "MAX_MIME_PARTS",
    "HeaderScan",
    "check_structure",
    "scan_headers",
    "scan_message",
]

#: The top header block (everything before the first blank line), in bytes.
MAX_HEADER_BYTES = 64 * 1024
#: Header fields in the top header block.
MAX_HEADER_FIELDS = 300
#: One header field of the top block, its folded lines included.
MAX_FIELD_BYTES = 8 * 1024
#: The From field: one mailbox, with a display name, fits in a line of 998 bytes.
MAX_FROM_BYTES = 2 * 1024
#: RFC 2047 encoded words (``=?charset?q?...?=``) in the whole email.
MAX_ENCODED_WORDS = 100
#: ``Content-Type`` fields in the whole email, i.e. MIME parts.
MAX_MIME_PARTS = 500
#: Parameters (``; name=value``) of one ``Content-Type`` or ``Content-Disposition`` field.
MAX_MIME_PARAMS = 30

_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
# A field whose name is From / Message-ID, with its continuation lines; linear.
_FROM_FIELD = re.compile(rb"^From[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.MULTILINE | re.IGNORECASE)
_MESSAGE_ID_FIELD = re.compile(rb"^Message-ID[ \t]*:(.*)", re.MULTILINE | re.IGNORECASE)
_ENCODED_WORD = re.compile(rb"=\?[^?\s]{1,80}\?[bBqQ]\?")
_MIME_FIELD = re.compile(
    rb"^Content-(Type|Disposition)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.MULTILINE | re.IGNORECASE
)


@dataclass(frozen=True, slots=True)
class HeaderScan:
    """What the top header block says before any full parse."""

    #: Raw values, as parsed (``Message.raw_items``): undecodable bytes as surrogates.
    from_values: list[str] = field(default_factory=list)
    message_id: str | None = None
    #: The limit the top header block exceeds, as a reject reason; None if within.
    problem: str | None = None
    #: Set when a From value is over MAX_FROM_BYTES: it is then never parsed.
    from_oversized: int | None = None


def scan_headers(raw: bytes) -> HeaderScan:
    """The From values and Message-ID of the top header block, and its first exceeded limit."""
    found = _BLANK_LINE.search(raw)
    size = found.start() + 1 if found else len(raw)
    if size > MAX_HEADER_BYTES:
        block = raw[:size]
        from_values = [_text(m.group(1)).lstrip(" \t") for m in _FROM_FIELD.finditer(block)]
        id_field = _MESSAGE_ID_FIELD.search(block)
        return _with_from_size(
            HeaderScan(
                from_values=from_values,
                message_id=_text(id_field.group(1)[:1000]).strip() if id_field else None,
                problem=f"the header block is {size} bytes; at most {MAX_HEADER_BYTES}",
            )
        )
    return scan_message(BytesHeaderParser(policy=compat32).parsebytes(raw[:size]))


def scan_message(message: email.message.Message) -> HeaderScan:
    """:func:`scan_headers` for a message already parsed (a small email is parsed
    once, in full, and this reads its top-level headers)."""
    items = message.raw_items()
    problem = None
    if len(message) > MAX_HEADER_FIELDS:
        problem = f"{len(message)} header fields; at most {MAX_HEADER_FIELDS}"
    else:
        longest = max(items, key=lambda item: len(item[1]), default=None)
        if longest is not None and len(longest[1]) > MAX_FIELD_BYTES:
            problem = (
                f"header field {longest[0][:40]!r} is {len(longest[1])} characters; "
                f"at most {MAX_FIELD_BYTES}"
            )
    message_id = message.get("Message-ID")
    return _with_from_size(
        HeaderScan(
            from_values=[value for name, value in message.raw_items() if name.lower() == "from"],
            message_id=None if message_id is None else str(message_id),
            problem=problem,
        )
    )


def _with_from_size(scan: HeaderScan) -> HeaderScan:
    longest = max((len(value) for value in scan.from_values), default=0)
    if longest <= MAX_FROM_BYTES:
        return scan
    return HeaderScan(scan.from_values, scan.message_id, scan.problem, longest)


def check_structure(raw: bytes) -> str | None:
    """The first limit the whole email exceeds (encoded words, MIME parts and
    parameters), as a reject reason; None when it is within all of them."""
    words = sum(1 for _ in _ENCODED_WORD.finditer(raw))
    if words > MAX_ENCODED_WORDS:
        return f"{words} encoded words (=?...?=) in the headers; at most {MAX_ENCODED_WORDS}"
    parts = 0
    for match in _MIME_FIELD.finditer(raw):
        name = "Content-" + match.group(1).decode("ascii").capitalize()
        parts += name == "Content-Type"
        value = match.group(2)
        if len(value) > MAX_FIELD_BYTES:
            return f"a {name} field is {len(value)} bytes; at most {MAX_FIELD_BYTES}"
        params = value.count(b";")
        if params > MAX_MIME_PARAMS:
            return f"a {name} field has {params} parameters; at most {MAX_MIME_PARAMS}"
        if parts > MAX_MIME_PARTS:
            return f"the MIME structure has over {MAX_MIME_PARTS} parts (Content-Type fields)"
    return None


def _text(value: bytes) -> str:
    """Header bytes as the standard parser gives them (ASCII, other bytes escaped)."""
    return value.decode("ascii", "surrogateescape").rstrip("\r\n")
