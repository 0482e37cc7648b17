"""The local import pipeline: emails from files -> parse -> store, in batches.

Streaming end to end: emails are read one at a time and committed a batch at a
time, so memory stays flat whatever the size of the export.

The IMAP ``max_size`` rule holds here too: an email over ``max_size`` bytes
(default 1 MiB, ``import --max-size`` raises it) is never parsed; only its
header block is read, and kept as the raw bytes of a reject that says so
(an email from another sender is skipped, as usual).
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from itertools import islice

from ..config.model import Config, ParseOptions
from ..errors import StoreError
from ..logs import log_event
from ..models import EmailOrigin, ParseOutcome, Rejected, Skipped, SmsRecord, Tally
from ..parse.authenticity import Deferred, Verifier
from ..parse.limits import scan_headers
from ..parse.message import parse_email, sender_matches
from ..store.db import Store
from ..store.rows import IngestItem, IngestResult, Router
from . import DEFAULT_BATCH
from .inflight import iter_recorded, split_crashed, submit_recorded
from .pool import GROUP, ParsePool

__all__ = [
    "DEFAULT_MAX_SIZE",
    "ReleaseResult",
    "import_emails",
    "oversized_outcome",
    "release_reject",
]

DEFAULT_MAX_SIZE = 1024 * 1024  # as accounts[].max_size
HEADER_LIMIT = 256 * 1024  # the header block kept of an oversized email, at most
_END_OF_HEADER = re.compile(rb"\r?\n\r?\n")

_log = logging.getLogger("inbound_mail.import")


def import_emails(
    emails: Iterable[tuple[bytes, EmailOrigin]],
    store: Store,
    options: ParseOptions,
    *,
    route: Router | None = None,
    batch_size: int = DEFAULT_BATCH,
    max_size: int = DEFAULT_MAX_SIZE,
    on_batch: Callable[[IngestResult], None] | None = None,
    on_parsed: Callable[[], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    verifier: Verifier | None = None,
    pool: ParsePool | None = None,
) -> Tally:
    """Parse, authenticate (with ``verifier``) and store every email; one transaction
    per batch (plus the one that records the batch in flight before its parse,
    :mod:`inbound_mail.sources.inflight`).  Bad emails become rejects, never exceptions;
    only a store failure raises (StoreError).  An email over ``max_size`` bytes is
    not parsed (see the module docstring).  An email whose verdict must wait (DNS
    failure) is not stored and counts as ``deferred``: importing the same files
    again picks it up.

    ``on_parsed`` is called after each email is parsed (a progress bar that
    moves per email, not per transaction); once ``should_stop`` returns True, the
    emails parsed so far are committed and no more are parsed: a rerun of the same
    import stores the rest, and recognises what is stored already.

    With a ``pool`` of more than one worker, emails are parsed in its processes
    (:mod:`inbound_mail.sources.pool`) while this one reads and stores; on a stop, the
    emails already shipped are parsed and committed too (at most ``pool.depth`` groups)."""
    if pool is not None and pool.workers > 1:
        return _import_pooled(
            iter(emails), store, options, pool, route=route, batch_size=batch_size,
            max_size=max_size, on_batch=on_batch, on_parsed=on_parsed,
            should_stop=should_stop, verifier=verifier,
        )  # fmt: skip
    total = Tally()
    iterator = iter(emails)
    stopped = False

    def parse(raw: bytes, origin: EmailOrigin) -> IngestItem:
        return _item(raw, origin, options, max_size)

    while not stopped and (batch := list(islice(iterator, batch_size))):
        # Emails a killed import was parsing go one at a time (inbound_mail.sources.inflight).
        groups = split_crashed(store, batch)
        del batch
        while groups and not stopped:
            group = groups.pop(0)
            items: list[IngestItem] = []
            held: list[EmailOrigin] = []  # recorded in flight, not stored
            parsed = 0
            for item in iter_recorded(store, group, options, parse=parse):
                parsed += 1
                checked = (
                    item.outcome if verifier is None else verifier.check(item.raw, item.outcome)
                )
                if on_parsed:
                    on_parsed()
                if isinstance(checked, Deferred):
                    held.append(item.origin)
                    log_event(
                        _log,
                        logging.WARNING,
                        "auth.deferred",
                        origin=item.origin.describe(),
                        reason=checked.reason,
                        action="not stored; import it again later",
                    )
                else:
                    items.append(
                        item if checked is item.outcome else replace(item, outcome=checked)
                    )
                if should_stop and should_stop():
                    stopped = True
                    break
            deferred = len(held)
            held += [origin for _, origin in group[parsed:]]  # stopped before their parse
            del group
            result = store.ingest(items, route=route, not_stored=held)
            del items
            if on_batch:
                on_batch(result)
            total.add_batch(result, deferred=deferred)
            # Drop this batch before the next one is read: otherwise two batches are
            # alive at once, and peak memory grows with the batch size twice over.
            del result
            stopped = stopped or bool(should_stop and should_stop())
    return total


def _import_pooled(
    iterator: Iterator[tuple[bytes, EmailOrigin]],
    store: Store,
    options: ParseOptions,
    pool: ParsePool,
    *,
    route: Router | None,
    batch_size: int,
    max_size: int,
    on_batch: Callable[[IngestResult], None] | None,
    on_parsed: Callable[[], None] | None,
    should_stop: Callable[[], bool] | None,
    verifier: Verifier | None,
) -> Tally:
    """:func:`import_emails` with a pool: a stream of groups of ``GROUP`` emails, each
    recorded in flight and shipped as it is read, at most ``pool.depth`` of them in
    flight (bounded memory), their items stored in order, a transaction per
    ``batch_size``."""
    total = Tally()
    in_flight: deque[Callable[[], list[IngestItem]]] = deque()
    items: list[IngestItem] = []
    held: list[EmailOrigin] = []  # recorded in flight, not stored (deferred)
    reading = True

    def oversized(raw: bytes, origin: EmailOrigin) -> IngestItem | None:
        return None if len(raw) <= max_size else _item(raw, origin, options, max_size)

    def commit() -> None:
        nonlocal items, held
        result = store.ingest(items, route=route, not_stored=held)
        if on_batch:
            on_batch(result)
        total.add_batch(result, deferred=len(held))
        items, held = [], []

    while True:
        while reading and len(in_flight) < pool.depth:
            group = list(islice(iterator, GROUP))
            if not group:
                reading = False
                break
            in_flight.append(submit_recorded(store, group, pool, decide=oversized))
        if not in_flight:
            break
        for item in in_flight.popleft()():
            checked = item.outcome if verifier is None else verifier.check(item.raw, item.outcome)
            if on_parsed:
                on_parsed()
            if isinstance(checked, Deferred):
                held.append(item.origin)
                log_event(_log, logging.WARNING, "auth.deferred",
                          origin=item.origin.describe(), reason=checked.reason,
                          action="not stored; import it again later")  # fmt: skip
            else:
                items.append(item if checked is item.outcome else replace(item, outcome=checked))
        if len(items) + len(held) >= batch_size:
            commit()
        if reading and should_stop and should_stop():
            reading = False  # what is shipped is stored; nothing more is read
    if items or held:
        commit()
    return total


def _item(raw: bytes, origin: EmailOrigin, options: ParseOptions, max_size: int) -> IngestItem:
    if len(raw) <= max_size:
        return IngestItem(raw, parse_email(raw, options), origin)
    match = _END_OF_HEADER.search(raw, 0, HEADER_LIMIT)
    header = raw[: match.end()] if match else raw[:HEADER_LIMIT]
    return IngestItem(header, oversized_outcome(header, len(raw), max_size, options), origin)


def oversized_outcome(
    header: bytes, size: int, max_size: int, options: ParseOptions, *, setting: str = "--max-size"
) -> ParseOutcome:
    """The outcome of an email over ``max_size``, from its header block alone: a
    reject naming ``setting`` when it is from a configured sender, else skipped."""
    scan = scan_headers(header)  # bounded work, whatever the size of the header block
    sender = None if scan.from_oversized else sender_matches(scan.from_values, options.senders)
    message_id = (scan.message_id or "").strip() or None
    if sender is None:
        return Skipped(reason="not from a configured sender", message_id=message_id)
    return Rejected(
        reason=(
            f"email is {size} bytes, over {setting} = {max_size}; "
            f"only its headers were read (raise {setting} to import it)"
        ),
        sender=sender,
        message_id=message_id,
        code="oversized",
    )


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    """What ``rejects --release`` did: the SMS id, and whether it was stored now
    (False: released before, or the same SMS was already stored)."""

    sms_id: str
    stored: bool
    already_released_at: str | None = None


def release_reject(config: Config, store: Store, reject_id: int) -> ReleaseResult:
    """Accept one reject after an operator looked at it: parse its raw email again,
    store the SMS (``authenticated`` false, the release in ``auth_reason``) and queue
    it for the sinks, once; the release is logged.  Raises StoreError if the reject
    does not exist or does not hold an SMS."""
    reject = store.get_reject(reject_id)
    if reject is None:
        raise StoreError(f"no reject with id {reject_id}")
    if reject["released_at"] is not None:
        return ReleaseResult(reject["released_sms_id"], False, reject["released_at"])
    account = next((a for a in config.accounts if a.name == reject["account"]), None)
    options = ParseOptions.from_config(config.parse, account.senders if account else None)
    outcome = parse_email(bytes(reject["raw"]), options)
    if not isinstance(outcome, SmsRecord):
        raise StoreError(
            f"reject {reject_id} cannot be released: its email is not an SMS "
            f"({outcome.reason}); only unauthenticated rejects can be released"
        )
    why = f"released by the operator from reject {reject_id}: {reject['reason']}"
    record = replace(outcome, authenticated=False, auth_reason=why[:1000])
    origin = EmailOrigin(
        kind=reject["kind"],
        account=reject["account"],
        folder=reject["folder"],
        uidvalidity=reject["uidvalidity"],
        uid=reject["uid"],
        path=reject["path"],
        key=reject["key"],
    )
    from ..delivery import make_router  # here: import_emails gets its route from the caller

    result = store.release(
        reject_id, IngestItem(bytes(reject["raw"]), record, origin), route=make_router(config.sinks)
    )
    if result is None:  # released by someone else since we read it
        return release_reject(config, store, reject_id)
    log_event(_log, logging.WARNING, "reject.released", reject=reject_id, sms=record.id,
              origin=reject["origin"], stored="new" if result.new else "duplicate",
              reason=reject["reason"])  # fmt: skip
    return ReleaseResult(record.id, bool(result.new))
