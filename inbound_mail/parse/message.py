"""Provider email -> :class:`SmsRecord`, :class:`Skipped` or :class:`Rejected`; pure, no I/O.

:func:`parse_email` never raises: whatever the bytes, it returns one of the three
outcomes.  The message is parsed once, by Python's :mod:`email` package; the
Subject and Date headers are read by mail-parser's own decoders
(``mailparser.utils.decode_headers``, ``mailparser.dates.parse_mail_date``), the
very functions ``MailParser`` applies to them.  The whole ``MailParser`` is not
built: it walks every part to collect attachments, Received chains, address
lists and defects that nothing here reads, and that walk was two thirds of a
provider email's parse (``benchmarks/README.md``, "Both cores");
``tests/parse/test_parse_parity.py`` holds the two to the same outputs.  The
body part is decoded here, because a provider body needs a charset fallback
that mail-parser does not do.  When the email package gives up (MIME nested
beyond Python's recursion limit) or this module meets an unexpected error, the
email is rejected ("cannot parse the MIME structure: ...", "internal parser
error: ...") if its From header names a configured sender, else skipped.

Bounded work
    Before the full parse, :mod:`inbound_mail.parse.limits` reads
    the top header block alone: the sender is checked there first, under the
    same strict rule as below (a From header over
    :data:`~inbound_mail.parse.limits.MAX_FROM_BYTES` is skipped unparsed), so
    mail from others costs almost nothing; a configured sender's
    email over a limit (header block, header fields, encoded words, MIME parts
    and parameters) is rejected with the limit in the reason (code
    ``over_limit``).  Only WHATWG
    charset labels are decoded (:mod:`inbound_mail.parse.charsets`), in mail-parser
    too; any other codec name is an unknown charset.

Who sent it
    Only the parsed addr-spec of the ``From`` header counts, compared
    case-insensitively with the configured senders; the display name never does
    (``"smsin@agiletelecom.com" <evil@x.com>`` is skipped).  The header is parsed
    strictly as an RFC 5322 address list (Python's ``email.headerregistry``
    parser): it must hold exactly one mailbox, no group, and the parser must
    report no defect at all.  Lenient scanners disagree on broken lists such as
    ``evil@example.com; smsin@agiletelecom.com`` (some read the second
    address, ``parseaddr``, Dovecot and DMARC evaluators the first), so any
    such header is skipped rather than guessed at.  No From header, two From
    headers, or a From header that is not one clean mailbox: skipped, with the
    reason.  ``SmsRecord.sender`` is the address, lower-cased.  Whether the
    email really comes from the provider is a separate step
    (:mod:`inbound_mail.parse.authenticity`).

Which body
    The first ``text/plain`` part that is not an attachment; an HTML part (the
    first ``text/html``) only when there is no plain part or the plain part holds
    no field label at all.  Attached emails (``message/*``) are not looked into.
    The charset is the declared one (a WHATWG label), then UTF-8, then Windows-1252, then
    ISO-8859-1 (which cannot fail); a declared ISO-8859-1 is read as
    Windows-1252, as browsers do, so that ``€`` and curly quotes survive.

HTML
    ``<style>``, ``<script>``, ``<head>`` and comments are dropped with their
    content; ``<br>`` is a line break; an opening or closing block tag (``p``,
    ``div``, ``tr``, ``li``, ``h1``-``h6``, ``table``, ...) ends the line unless
    it already ended; a table cell end is a space; other tags vanish and
    entities are decoded (``&nbsp;`` is U+00A0, not a space).  Spaces are not
    collapsed.  A line break in the
    source right after ``<br>`` or a block tag is formatting and dropped, and so
    is source text made only of whitespace with a line break in it (indentation
    between tags); any other source line break stays a line break.

Fields
    Lines are split on CRLF, LF or a lone CR.  A label is ``From``, ``To``,
    ``Date/Time`` (spaces allowed around the slash), ``Body`` or ``Text``, in any
    case, at the start of a line (after optional spaces or tabs), followed by
    optional spaces or tabs and one ``:`` or ``=``.  Lines before and between
    the From/To/Date/Time lines that hold no label (a greeting) are ignored; a
    field given twice is rejected.  The first ``Body``/``Text`` label starts the
    text, which runs to the end of the body: label-looking lines inside it
    (``To: the team``) stay in the text.  From, To and Date/Time values are
    stripped of surrounding whitespace.  The originator may be an alphanumeric
    sender ID (``ACME``).

Text normalisation (:func:`normalise_text`)
    The text is everything after the text label's separator, then: line endings
    become ``\\n``; spaces and tabs at the end of every line are dropped; blank
    lines at the start and at the end are dropped; spaces and tabs before the
    first visible character are dropped (they cannot be told apart from the
    separator's padding).  Nothing else changes: inner spaces, indentation of
    later lines, blank lines inside the text and every other character are
    kept.  An empty text is a valid SMS.

Date/Time
    ``date_time`` is kept raw: 14 ASCII digits ``YYYYMMDDHHMMSS`` that must form
    a real calendar time, else the email is rejected.  ``received_at`` is that
    wall-clock time in the configured zone (default ``Europe/Rome``) as UTC,
    ISO-8601 with ``Z``.  An ambiguous time (the repeated hour when DST ends,
    ``2025-10-26 02:30``) is the FIRST occurrence, still summer time
    (``00:30Z``); a non-existent time (the skipped hour when DST starts,
    ``2025-03-30 02:30``) is read with the offset in force BEFORE the gap
    (``01:30Z``).  Both are what :mod:`zoneinfo` gives with ``fold=0``.

Rejected besides missing or invalid fields
    A body over :data:`MAX_BODY_CHARS` characters, or one holding a NUL
    character (corruption: no SMS carries one).  A To value that is not a phone
    number (``+`` and 3-20 digits), or a From value that is neither a number nor
    a printable sender ID of at most 32 characters: IMAP servers turn NUL bytes
    into 0x80, so a corrupt email can reach us that way too.

Keyword
    With ``keyword`` on, a first word of 4 to 8 ASCII letters or digits followed
    by whitespace or the end of the text is copied to ``keyword``, as sent (not
    upper-cased).  ``text`` always stays the full text, so the dedup id does not
    depend on configuration.

Email metadata
    ``message_id`` is the Message-ID header as written (angle brackets kept),
    stripped of surrounding whitespace; ``email_date`` is the Date header in UTC
    ISO-8601 with ``Z`` when it parses, else the raw header; ``subject`` is the
    decoded Subject.  Absent headers are ``None``.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import fields, replace
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mailparser.dates import parse_mail_date
from mailparser.utils import decode_headers

from ..config.model import ParseOptions
from ..models import ParseOutcome, Rejected, Skipped, SmsRecord, reject_code_for
from .charsets import codec_for, neutralise, neutralise_value
from .html import html_to_text
from .limits import MAX_FROM_BYTES, MAX_HEADER_BYTES, check_structure, scan_headers, scan_message

__all__ = [
    "DEFAULT_OPTIONS",
    "MAX_BODY_CHARS",
    "normalise_text",
    "parse_email",
    "sender_address",
    "sender_matches",
    "to_utc_iso",
]

# A provider body is a few hundred characters; anything this large is not one,
# and refusing it keeps every parse well under a second.
MAX_BODY_CHARS = 1_000_000

_LABEL = re.compile(r"[ \t]*(from|to|date[ \t]*/[ \t]*time|body|text)[ \t]*[:=]", re.IGNORECASE)
_FIELD_NAMES = {"from": "From", "to": "To", "date/time": "Date/Time"}
_DATE_TIME = re.compile(r"[0-9]{14}")
_KEYWORD = re.compile(r"([A-Za-z0-9]{4,8})(?:\s|$)")


DEFAULT_OPTIONS = ParseOptions()


def parse_email(raw: bytes, options: ParseOptions = DEFAULT_OPTIONS) -> ParseOutcome:
    """Classify and parse one raw email.  Never raises (see the module docstring)."""
    raw = bytes(raw)
    try:
        early, message = _gate(raw, options)
    except Exception as exc:  # a bug here must cost one email, never the daemon
        return _failed(raw, options, f"internal parser error: {_exception_text(exc)}")
    if early is not None:
        return early
    try:
        message = message or email.message_from_bytes(raw)
        neutralise(message)  # only real charsets are decoded, by mail-parser too
    except Exception as exc:  # the email package gave up (e.g. absurd MIME nesting)
        return _failed(raw, options, f"cannot parse the MIME structure: {_exception_text(exc)}")
    try:
        return _storable(_parse_message(message, options))
    except Exception as exc:  # a bug here must cost one email, never the daemon
        return _failed(raw, options, f"internal parser error: {_exception_text(exc)}")


def _gate(
    raw: bytes, options: ParseOptions
) -> tuple[ParseOutcome | None, email.message.Message | None]:
    """The outcome decided before the full parse (or None to go on), and the
    email's parsed message when it was small enough to be parsed here already.

    The sender comes first, from the top header block alone, so mail from
    others costs almost nothing; the limits of :mod:`inbound_mail.parse.limits`
    apply to a configured sender's email.  A From header that names a
    configured sender (the common case) goes to the cheap limit checks at once:
    the full parse checks the sender again, exactly as before."""
    message = None
    if len(raw) <= MAX_HEADER_BYTES:  # bounded: parse once, in full, and reuse it
        try:
            message = email.message_from_bytes(raw)
        except Exception:  # the full parse below fails the same way, with the reason
            message = None
    scan = scan_message(message) if message is not None else scan_headers(raw)
    message_id = _clean(scan.message_id)
    if scan.from_oversized is not None:  # no provider writes that; never parsed
        reason = f"the From header is {scan.from_oversized} characters; at most {MAX_FROM_BYTES}"
        return Skipped(reason=reason, message_id=message_id), None
    named = " ".join(scan.from_values).lower()
    limit = None
    if any(sender in named for sender in options.senders):
        limit = scan.problem or check_structure(raw)
        if limit is None:
            return None, message
    # The same strict From rule as the full parse, on the values the full parse
    # would see (refused charsets renamed, as neutralise() does to the message).
    # A From that the rule refuses is skipped here too, even over a limit.
    fetched = [
        compat32.header_fetch_parse("From", neutralise_value(value)) for value in scan.from_values
    ]
    address, problem, names = _from_address(fetched)
    if address is None or address not in options.senders:
        reason = problem or _not_ours(address or "", names, options)
        return Skipped(reason=reason, sender=address, message_id=message_id), None
    if limit := limit or scan.problem or check_structure(raw):
        rejected = Rejected(reason=limit, sender=address, message_id=message_id, code="over_limit")
        return rejected, None
    return None, message


def _storable(outcome: ParseOutcome) -> ParseOutcome:
    """Replace lone surrogates (undecodable header bytes) with U+FFFD: SQLite and
    JSON cannot encode them, and one such email must never block a batch."""
    changes: dict[str, Any] = {}
    for name, value in ((f.name, getattr(outcome, f.name)) for f in fields(outcome)):
        if isinstance(value, str) and _SURROGATE.search(value):
            changes[name] = _SURROGATE.sub("\ufffd", value)
    return replace(outcome, **changes) if changes else outcome


def normalise_text(text: str) -> str:
    """The SMS text as stored: the normalisation in the module docstring."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip(" \t") for line in text.split("\n")]
    return "\n".join(lines).strip("\n").lstrip(" \t")


def to_utc_iso(date_time: str, zone: str) -> str:
    """``YYYYMMDDHHMMSS`` wall-clock time in ``zone`` -> ``YYYY-MM-DDTHH:MM:SSZ``.

    Raises ValueError for anything but 14 digits forming a real time, or an
    unknown zone.  Ambiguous and non-existent times resolve with ``fold=0``.
    """
    if not _DATE_TIME.fullmatch(date_time):
        raise ValueError("expected 14 digits YYYYMMDDHHMMSS")
    try:
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {zone!r}") from exc
    month, day, hour, minute, second = (int(date_time[i : i + 2]) for i in range(4, 14, 2))
    local = datetime(int(date_time[:4]), month, day, hour, minute, second, tzinfo=tz)
    try:
        return _iso_z(local.astimezone(UTC))
    except OverflowError as exc:
        raise ValueError("out of the representable range") from exc


def sender_address(raw: bytes) -> str | None:
    """The lower-cased From address of a raw email (its headers suffice).

    None unless there is exactly one From header holding exactly one address.
    """
    try:
        message = BytesHeaderParser(policy=compat32).parsebytes(bytes(raw))
        return _single_from(message.get_all("From", []))[0]
    except Exception:
        return None


def sender_matches(from_values: Sequence[Any], senders: Iterable[str]) -> str | None:
    """The From address, lower-cased, if ``from_values`` (every From header of one
    email, as ``Message.get_all`` returns them) name exactly one address and it is
    one of ``senders``; else None."""
    try:
        address = _single_from(list(from_values))[0]
    except Exception:
        return None
    wanted = {s.strip().lower() for s in senders}
    return address if address is not None and address in wanted else None


# -- the steps ---------------------------------------------------------------------------------


def _parse_message(message: email.message.Message, options: ParseOptions) -> ParseOutcome:
    message_id = _clean(message.get("Message-ID"))
    from_values = message.get_all("From", [])
    address, problem, names = _from_address(from_values)
    if address is None or address not in options.senders:
        reason = problem or _not_ours(address or "", names, options)
        return Skipped(reason=reason, sender=address, message_id=message_id)
    subject = _clean(decode_headers(message.get_all("Subject")))
    fields = _extract(message)
    if isinstance(fields, str):
        return _rejected(fields, address, message_id, subject)
    originator, destination, date_time, text = fields
    if problem := _invalid_numbers(originator, destination):
        return _rejected(problem, address, message_id, subject)
    try:
        received_at = to_utc_iso(date_time, options.timezone)
    except ValueError as exc:
        return _rejected(f"invalid Date/Time {date_time!r}: {exc}", address, message_id, subject)
    return SmsRecord(
        originator=originator,
        destination=destination,
        date_time=date_time,
        received_at=received_at,
        text=text,
        keyword=_keyword(text) if options.keyword else None,
        message_id=message_id,
        email_date=_email_date(message),
        subject=subject,
        sender=address,
    )


def _rejected(reason: str, sender: str, message_id: str | None, subject: str | None) -> Rejected:
    """A reject coded by its reason (``missing_field``, ``invalid_date_time``, ...)."""
    code = reject_code_for(reason)
    return Rejected(reason=reason, sender=sender, message_id=message_id, subject=subject, code=code)


def _failed(raw: bytes, options: ParseOptions, reason: str) -> ParseOutcome:
    """The outcome when parsing broke: Rejected if the sender is ours, else Skipped."""
    try:
        message = BytesHeaderParser(policy=compat32).parsebytes(raw)
        address, problem, names = _from_address(message.get_all("From", []))
        message_id = _clean(message.get("Message-ID"))
        subject = _decoded_header(message.get("Subject"))
    except Exception:
        address, problem, message_id, subject = None, "the headers cannot be read", None, None
        names = []
    if address is not None and address in options.senders:
        return _rejected(reason, address, message_id, subject)
    why = problem or _not_ours(address or "", names, options)
    return Skipped(reason=why, sender=address, message_id=message_id)


def _single_from(from_values: list[Any]) -> tuple[str | None, str | None]:
    """(address, problem) for the From header values of one email."""
    address, problem, _ = _from_address(from_values)
    return address, problem


# A From header is one mailbox: a few hundred characters at most.  Longer ones are
# refused before the (pure Python) RFC 5322 parser spends time on them.
_MAX_FROM_CHARS = 2000


def _from_address(from_values: list[Any]) -> tuple[str | None, str | None, list[str]]:
    """(lower-cased address, None, display names) or (address or None, why it cannot
    be the provider, display names), under the strict rule in the module docstring."""
    if not from_values:
        return None, "no From header", []
    if len(from_values) > 1:
        return None, f"{len(from_values)} From headers; a provider email has one", []
    address, problem, names = _strict_from(str(from_values[0]))
    return address, problem, list(names)


# The strict parse is pure Python and the dearest step of parse_email (a third of
# it); a provider's emails all carry the same few From values, so it is cached.
@functools.lru_cache(maxsize=1024)
def _strict_from(value: str) -> tuple[str | None, str | None, tuple[str, ...]]:
    shown = repr((_clean(value) or "")[:200])
    if len(value) > _MAX_FROM_CHARS:
        return None, f"From header is {len(value)} characters; a provider email has one address", ()
    try:
        # Unfold first: the parser reads one logical line.
        header = email.policy.default.header_factory("From", re.sub(r"\r?\n[ \t]", " ", value))
        groups = list(header.groups)
        defects = list(header.defects)
    except Exception:  # the parser has no documented exceptions: treat any as unparseable
        return None, f"From header {shown} cannot be parsed as an address list", ()
    mailboxes = [a for g in groups for a in g.addresses]
    names = [a.display_name for a in mailboxes]
    addresses = [a.addr_spec.strip() for a in mailboxes if a.username and a.domain]
    if not addresses:
        return None, f"no valid address in From header {shown}", tuple(names)
    if defects:
        # A defect means the parsers in the wild may read another address than this one.
        why = "; ".join(dict.fromkeys(str(d) for d in defects))[:200]
        return None, f"From header {shown} is not a strict RFC 5322 address ({why})", tuple(names)
    if any(g.display_name is not None for g in groups):
        return (
            None,
            f"From header {shown} is a group; a provider email names one mailbox",
            tuple(names),
        )
    if len(addresses) > 1:
        listed = ", ".join(addresses)[:200]
        return (
            None,
            f"From header holds {len(addresses)} addresses ({listed}); expected one",
            tuple(names),
        )
    return addresses[0].lower(), None, tuple(names)


def _not_ours(address: str, display_names: list[str], options: ParseOptions) -> str:
    reason = f"sender {address} is not a configured sender ({', '.join(options.senders)})"
    names = " ".join(display_names).lower()
    if any(sender in names for sender in options.senders):
        reason += "; the display name naming a configured sender is ignored"
    return reason


def _extract(message: email.message.Message) -> tuple[str, str, str, str] | str:
    """(originator, destination, date_time, text), or the reason the body is not valid."""
    plain, html_part = _body_parts(message)
    if plain is None and html_part is None:
        return "no text/plain or text/html body part"
    result: tuple[str, str, str, str] | str = _NO_LABELS
    for part, is_html in ((plain, False), (html_part, True)):
        if part is None:
            continue
        body = _decode(part)
        if len(body) > MAX_BODY_CHARS:
            return f"body is {len(body)} characters; a provider email has a few hundred"
        if "\x00" in body:
            return "the body contains NUL characters: a corrupt email"
        result = _fields(html_to_text(body) if is_html else body)
        if result != _NO_LABELS:
            return result
    return result


def _body_parts(
    message: email.message.Message,
) -> tuple[email.message.Message | None, email.message.Message | None]:
    """The first inline text/plain and text/html leaves, depth first, without recursion."""
    plain = html_part = None
    stack = [message]
    while stack:
        part = stack.pop()
        if part.is_multipart():
            children = part.get_payload()
            if part.get_content_maintype() != "message" and isinstance(children, list):
                stack.extend(c for c in reversed(children) if isinstance(c, email.message.Message))
            continue
        if part.get_content_disposition() == "attachment":
            continue
        content_type = part.get_content_type()
        if content_type == "text/plain" and plain is None:
            plain = part
        elif content_type == "text/html" and html_part is None:
            html_part = part
    return plain, html_part


def _decode(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    for codec in _codecs(part.get_content_charset()):
        try:
            text = payload.decode(codec)
            text.encode("utf-8")  # some codecs yield lone surrogates: not text
        except (LookupError, UnicodeError):
            continue
        return text
    return payload.decode("latin-1")


def _codecs(declared: str | None) -> list[str]:
    name = codec_for(declared)  # None for anything but a real mail charset
    if name == "iso8859-1":
        name = "cp1252"  # WHATWG: the C1 range of "latin-1" mail is Windows-1252
    return list(dict.fromkeys(c for c in (name, "utf-8", "cp1252") if c))


_NO_LABELS = "no field labels found (expected From, To, Date/Time and Body lines)"


_SURROGATE = re.compile("[\ud800-\udfff]")
_PHONE = re.compile(r"\+?[0-9]{3,20}\Z")


def _fields(body: str) -> tuple[str, str, str, str] | str:
    lines = body.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    values: dict[str, str] = {}
    text: str | None = None
    for index, line in enumerate(lines):
        match = _LABEL.match(line)
        if match is None:
            continue
        label = match.group(1).lower().replace(" ", "").replace("\t", "")
        if label in ("body", "text"):
            text = "\n".join([line[match.end() :], *lines[index + 1 :]])
            break
        if label in values:
            return f"field {_FIELD_NAMES[label]} appears twice"
        values[label] = line[match.end() :].strip()
    if text is None and not values:
        return _NO_LABELS
    missing = [name for key, name in _FIELD_NAMES.items() if key not in values]
    if text is None:
        missing.append("Body")
    if missing:
        return f"missing field(s): {', '.join(missing)}"
    for key, name in _FIELD_NAMES.items():
        if not values[key]:
            return f"field {name} is empty"
    assert text is not None
    return values["from"], values["to"], values["date/time"], normalise_text(text)


def _invalid_numbers(originator: str, destination: str) -> str | None:
    """Why the From/To values cannot be an SMS's, or None.  The destination is a
    rented number, so digits; the originator may also be an alphanumeric sender ID."""
    if not _PHONE.match(destination):
        return f"field To {destination!r} is not a phone number"
    if len(originator) > 32 or not originator.isprintable() or "\ufffd" in originator:
        return f"field From {originator!r} is neither a phone number nor a sender ID"
    return None


def _keyword(text: str) -> str | None:
    match = _KEYWORD.match(text)
    return match.group(1) if match else None


def _email_date(message: email.message.Message) -> str | None:
    """The first Date header as mail-parser reads it (its UTC moment), in ISO-8601 with
    ``Z``; the raw header when that fails."""
    raw = next((value for name, value in message.raw_items() if name.lower() == "date"), None)
    value = parse_mail_date(raw).value
    if isinstance(value, datetime):
        try:
            utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
            return _iso_z(utc)
        except (OverflowError, ValueError):
            pass
    return _clean(message.get("Date"))


def _iso_z(moment: datetime) -> str:
    return moment.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def _clean(value: object) -> str | None:
    """A header value as printable text: stripped, no lone surrogates, None when empty."""
    if value is None:
        return None
    text = str(value).encode("utf-8", "replace").decode("utf-8").strip()
    return text or None


def _decoded_header(value: object) -> str | None:
    if value is None:
        return None
    try:
        return _clean(make_header(decode_header(str(value))))
    except Exception:  # malformed encoded words: keep the raw text
        return _clean(value)


def _exception_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
