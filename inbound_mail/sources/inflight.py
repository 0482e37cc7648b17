"""Parsing that survives a parser crash: each email is recorded before its parse.

A crafted email that kills the process while it is parsed (or stalls the parse
until the systemd watchdog kills it) would otherwise be fetched and parsed
again at every restart, for ever, and nothing behind it would be stored.  So:

1. Before a group of emails is parsed, one row per email is committed in the
   ``parsing`` table (:meth:`Store.mark_parsing`: one commit per group).  The
   ingest transaction that stores their outcomes deletes the rows.
2. After a restart, rows left by the dead process name the emails that were in
   flight (:meth:`Store.parse_crashes`; a row of a process still running, such
   as a ``backfill`` beside the daemon, is no crash, nor is this process's own).
   Such emails are parsed one at a time, each in its own group, so the attempt
   is counted against the one email that was being parsed when the process
   died; the others are stored.
3. An email that :data:`MAX_PARSE_CRASHES` processes died parsing is not parsed
   again: it becomes a reject (reason :data:`CRASH_REASON`, raw bytes kept),
   and, like every reject, it is left in the mailbox untouched.

The IMAP pass (:mod:`inbound_mail.sources.imap.sync`, backfill included) and ``import``
(:mod:`inbound_mail.sources.importer`) both parse through :func:`parse_recorded`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

from ..config.model import ParseOptions
from ..faults import fault_email
from ..models import EmailOrigin, Rejected
from ..parse.message import parse_email
from ..store.db import Store
from ..store.rows import IngestItem

if TYPE_CHECKING:
    from .pool import ParsePool

__all__ = [
    "CRASH_REASON",
    "MAX_PARSE_CRASHES",
    "crash_reject",
    "iter_recorded",
    "parse_recorded",
    "split_crashed",
    "split_runs",
    "submit_recorded",
]

#: Processes that may die parsing one email before it becomes a reject.
MAX_PARSE_CRASHES = 2
#: How such a reject's reason starts (a stable code to search for).
CRASH_REASON = "parser crash"

Email = tuple[bytes, EmailOrigin]
T = TypeVar("T")


def parse_recorded(
    store: Store,
    emails: Sequence[Email],
    options: ParseOptions,
    *,
    record: bool = True,
    on_parsed: Callable[[], None] | None = None,
) -> list[IngestItem]:
    """Parse ``emails`` after recording them in flight (``record=False``, for a
    dry run that stores nothing: parse only).  ``on_parsed`` runs after each
    email: progress for the watchdog counts per email, not per group."""
    items = []
    for item in iter_recorded(store, emails, options, record=record):
        items.append(item)
        if on_parsed is not None:
            on_parsed()
    return items


def iter_recorded(
    store: Store,
    emails: Sequence[Email],
    options: ParseOptions,
    *,
    record: bool = True,
    parse: Callable[[bytes, EmailOrigin], IngestItem] | None = None,
) -> Iterator[IngestItem]:
    """:func:`parse_recorded`, one email at a time: the whole group is recorded
    before the first is parsed, and the caller may stop early.  Emails recorded
    but not stored (never parsed, or held back) must then be passed to
    :meth:`Store.ingest` as ``not_stored``, or a restart counts them as crashes.
    ``parse`` replaces :func:`parse_email` (``import --max-size``); an email the
    parser died on twice is never handed to it."""
    crashed = store.parse_crashes(origin for _, origin in emails) if record else {}
    if record:
        store.mark_parsing(o for _, o in emails if crashed.get(o, 0) < MAX_PARSE_CRASHES)
    for raw, origin in emails:
        crashes = crashed.get(origin, 0)
        if crashes >= MAX_PARSE_CRASHES:
            yield IngestItem(raw, crash_reject(crashes), origin)
            continue
        fault_email("crash-parse", raw)
        fault_email("stall-parse", raw)
        if parse is not None:
            yield parse(raw, origin)
        else:
            yield IngestItem(raw, parse_email(raw, options), origin)


def submit_recorded(
    store: Store,
    emails: Sequence[Email],
    pool: ParsePool,
    *,
    decide: Callable[[bytes, EmailOrigin], IngestItem | None] | None = None,
) -> Callable[[], list[IngestItem]]:
    """:func:`iter_recorded` through a :class:`~inbound_mail.sources.pool.ParsePool`: the
    group is recorded in flight and shipped now; the returned function waits for
    its items, in order.  An email a dead process was parsing is parsed alone in a
    worker (never in the writer); one the parser died on twice is a reject.
    ``decide`` may settle an email without the parser (``import --max-size``)."""
    crashed = store.parse_crashes(origin for _, origin in emails)
    store.mark_parsing(o for _, o in emails if crashed.get(o, 0) < MAX_PARSE_CRASHES)
    settled: dict[int, IngestItem] = {}
    to_parse: list[int] = []
    for i, (raw, origin) in enumerate(emails):
        crashes = crashed.get(origin, 0)
        if crashes >= MAX_PARSE_CRASHES:
            settled[i] = IngestItem(raw, crash_reject(crashes), origin)
        elif decide is not None and (item := decide(raw, origin)) is not None:
            settled[i] = item
        else:
            to_parse.append(i)
    alone = frozenset(k for k, i in enumerate(to_parse) if emails[i][1] in crashed)
    parsing = pool.submit([emails[i][0] for i in to_parse], alone=alone)

    def items() -> list[IngestItem]:
        for i, outcome in zip(to_parse, parsing.outcomes(), strict=True):
            settled[i] = IngestItem(emails[i][0], outcome, emails[i][1])
        return [settled[i] for i in range(len(emails))]

    return items


def split_crashed(store: Store, emails: Sequence[Email]) -> list[list[Email]]:
    """``emails`` as groups to parse and store in turn (see :func:`split_runs`)."""
    crashed = store.parse_crashes(origin for _, origin in emails)
    if not crashed:
        return [list(emails)]
    return split_runs(emails, lambda email: email[1] in crashed)


def split_runs(items: Sequence[T], alone: Callable[[T], bool]) -> list[list[T]]:
    """``items`` in order, cut into runs: each item ``alone`` says so is a group of
    its own, the items between them stay together."""
    groups: list[list[T]] = []
    run: list[T] = []
    for item in items:
        if alone(item):
            groups += [run, [item]] if run else [[item]]
            run = []
        else:
            run.append(item)
    return [*groups, run] if run else groups


def crash_reject(crashes: int) -> Rejected:
    return Rejected(
        reason=(
            f"{CRASH_REASON}: the process died {crashes} times while parsing this email "
            "(a crash, or a stall the watchdog ended); it is not parsed again, and is "
            "left in the mailbox untouched"
        ),
        code="parser_crash",
    )
