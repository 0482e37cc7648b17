"""The value types that flow along the data path: source email -> outcome -> store -> sinks."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sized
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, get_args

__all__ = [
    "DEDUP_FIELDS",
    "REJECT_CODES",
    "Batch",
    "Counted",
    "EmailOrigin",
    "ParseOutcome",
    "RejectCode",
    "Rejected",
    "Skipped",
    "SmsRecord",
    "Tally",
    "dedup_id",
]

# The fields that make two SMS "the same".  Email metadata (Message-ID, Date,
# Subject) is deliberately left out: the provider sends one SMS under two
# Message-IDs now and then, and that must still be stored once.
DEDUP_FIELDS = ("originator", "destination", "date_time", "text")
_DEDUP_DOMAIN = b"inbound-mail/sms/v1\x00"


def dedup_id(originator: str, destination: str, date_time: str, text: str) -> str:
    """The SMS id: SHA-256 (hex) over the length-prefixed UTF-8 fields.

    Each field is preceded by its byte length as 8 big-endian bytes, so no two
    different field tuples produce the same input to the hash (plain
    concatenation would let ``("1", "23")`` collide with ``("12", "3")``).
    ``surrogatepass`` encodes a lone surrogate (a text decoded with
    ``surrogateescape`` upstream) as its own bytes instead of failing, so distinct
    texts keep distinct ids.  Never change the handler: every stored id would change.
    """
    digest = hashlib.sha256(_DEDUP_DOMAIN)
    for value in (originator, destination, date_time, text):
        data = value.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class SmsRecord:
    """One SMS, as parsed from one provider email.

    ``date_time`` is the provider's raw ``YYYYMMDDHHMMSS`` (no zone);
    ``received_at`` is that instant in UTC, ISO-8601 with a ``Z``, computed in
    the configured zone.  ``keyword`` is set only when keyword splitting is on
    and the text starts with a 4-8 character alphanumeric word.

    ``authenticated`` is the verdict of :mod:`inbound_mail.parse.authenticity`: True
    (DKIM or a trusted Authentication-Results passed), False (it did not, and
    ``authenticate = "report"`` or an operator's release let it through), None
    (not checked: the parser's own output, or ``authenticate = "off"``);
    ``auth_reason`` says why.  Neither is part of the dedup id.
    """

    originator: str
    destination: str
    date_time: str
    received_at: str
    text: str
    keyword: str | None = None
    message_id: str | None = None
    email_date: str | None = None
    subject: str | None = None
    sender: str | None = None
    authenticated: bool | None = None
    auth_reason: str | None = None

    @property
    def id(self) -> str:
        """The dedup id, stable across emails, restarts and resends."""
        return dedup_id(self.originator, self.destination, self.date_time, self.text)

    def to_dict(self) -> dict[str, Any]:
        """Every field plus ``id``; the shape of the JSON output and of the sinks."""
        return {"id": self.id, **asdict(self)}


@dataclass(frozen=True, slots=True)
class Skipped:
    """The email is not from a configured sender: not ours, left alone."""

    reason: str
    sender: str | None = None
    message_id: str | None = None


#: Why an email is a reject: it was over ``max_size`` (``oversized``), the server
#: never returned it (``unfetchable``), it claims the provider's address without
#: proof (``unauthenticated``, with the evidence), it exceeds a limit of
#: :mod:`inbound_mail.parse.limits` (``over_limit``), the process died twice while
#: parsing it (``parser_crash``, :mod:`inbound_mail.sources.inflight`), or the
#: parser could not read it: ``no_body``, ``body_too_long``, ``corrupt_body``,
#: ``no_fields``, ``missing_field``, ``duplicate_field``, ``empty_field``,
#: ``invalid_number``, ``invalid_date_time``, ``bad_mime``, ``parser_error``, and
#: ``malformed`` for any other reason.  The metric and ``rejects`` show this column.
RejectCode = Literal[
    "malformed",
    "oversized",
    "unfetchable",
    "unauthenticated",
    "over_limit",
    "parser_crash",
    "no_body",
    "body_too_long",
    "corrupt_body",
    "no_fields",
    "missing_field",
    "duplicate_field",
    "empty_field",
    "invalid_number",
    "invalid_date_time",
    "bad_mime",
    "parser_error",
]
REJECT_CODES: tuple[RejectCode, ...] = get_args(RejectCode)

# The parser's reasons, as it words them, and their codes: the parser codes its
# rejects with these where it writes them, and the upgrade codes rejects stored
# before the finer codes existed.  The first match wins.
_REASONS: tuple[tuple[str, RejectCode], ...] = (
    (r"^email is \d+ bytes, over", "oversized"),
    (r"^no text/plain or text/html body", "no_body"),
    (r"^body is \d+ characters", "body_too_long"),
    (r"NUL characters", "corrupt_body"),
    (r"^no field labels found", "no_fields"),
    (r"^missing field", "missing_field"),
    (r"^field \S+ appears twice", "duplicate_field"),
    (r"^field \S+ is empty", "empty_field"),
    (r"^field (To|From) .* (phone number|sender ID)", "invalid_number"),
    (r"^invalid Date/Time", "invalid_date_time"),
    (r"^cannot parse the MIME structure", "bad_mime"),
    (r"^internal parser error", "parser_error"),
    (r"; at most \d+$|^the MIME structure has over", "over_limit"),
    (r"^parser crash", "parser_crash"),
    (r"^unauthenticated: ", "unauthenticated"),
)
_REASON_CODES = tuple((re.compile(pattern), code) for pattern, code in _REASONS)


def reject_code_for(reason: str) -> RejectCode:
    """The code of one of the parser's reasons; ``malformed`` for any other."""
    for pattern, code in _REASON_CODES:
        if pattern.search(reason):
            return code
    return "malformed"


@dataclass(frozen=True, slots=True)
class Rejected:
    """The email comes from a configured sender but is not a valid provider email,
    or not provably from the provider (``code``; ``evidence`` says what was checked)."""

    reason: str
    sender: str | None = None
    message_id: str | None = None
    subject: str | None = None
    code: RejectCode = "malformed"
    evidence: str | None = None


ParseOutcome = SmsRecord | Skipped | Rejected


@dataclass(frozen=True, slots=True)
class EmailOrigin:
    """Where one email came from: an IMAP message or a local file.

    For IMAP, ``account``, ``folder``, ``uidvalidity`` and ``uid`` are set; for a
    local export, ``path`` (and ``key``: the mbox index or Maildir key).
    """

    kind: Literal["imap", "eml", "mbox", "maildir"]
    account: str | None = None
    folder: str | None = None
    uidvalidity: int | None = None
    uid: int | None = None
    path: str | None = None
    key: str | None = None

    def describe(self) -> str:
        """A short human description for logs and the rejects table."""
        if self.kind == "imap":
            return (
                f"imap:{self.account}/{self.folder};UIDVALIDITY={self.uidvalidity};UID={self.uid}"
            )
        suffix = f"#{self.key}" if self.key is not None else ""
        return f"{self.kind}:{self.path}{suffix}"


Counted = Literal["new", "duplicates", "skipped", "rejected", "deferred"]
"""What became of one email, as a :class:`Tally` counts it: ``deferred`` is not stored,
since its authenticity verdict must wait (DNS failure)."""


class Batch(Protocol):
    """What a store transaction reports (``store.rows.IngestResult`` is one)."""

    @property
    def new(self) -> Sized: ...
    @property
    def duplicates(self) -> Sized: ...
    @property
    def skipped(self) -> int: ...
    @property
    def rejected(self) -> int: ...


@dataclass(slots=True)
class Tally:
    """Running counts over many batches (kept as numbers, so memory stays flat): the one
    summary of ``import``, ``backfill`` and a sync pass."""

    new: int = 0
    duplicates: int = 0
    skipped: int = 0
    rejected: int = 0
    deferred: int = 0

    @property
    def read(self) -> int:
        return self.new + self.duplicates + self.skipped + self.rejected + self.deferred

    def add(self, outcome: Counted, count: int = 1) -> None:
        """Count ``count`` emails that became ``outcome``."""
        setattr(self, outcome, getattr(self, outcome) + count)

    def add_batch(self, batch: Batch, *, deferred: int = 0) -> None:
        """Count what one store transaction did, plus ``deferred`` emails held back from it."""
        self.merge(
            Tally(len(batch.new), len(batch.duplicates), batch.skipped, batch.rejected, deferred)
        )

    def merge(self, other: Tally) -> None:
        for outcome in get_args(Counted):
            self.add(outcome, getattr(other, outcome))

    def as_dict(self, *, deferred_hint: str = "import them again later") -> dict[str, int]:
        """The summary line's counts; ``deferred`` only when there are some (the usual
        summary stays as it was), with ``deferred_hint`` saying how to pick them up."""
        counts = {
            "read": self.read,
            "new": self.new,
            "duplicates": self.duplicates,
            "skipped": self.skipped,
            "rejected": self.rejected,
        }
        if self.deferred:
            counts[f"deferred (DNS failed: {deferred_hint})"] = self.deferred
        return counts
