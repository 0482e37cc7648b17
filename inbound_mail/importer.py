"""The local import pipeline: emails from files -> parse -> store, in batches.

Streaming end to end: emails are read one at a time and committed a batch at a
time, so memory stays flat whatever the size of the export.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from itertools import islice

from .authenticity import Deferred, Verifier
from .config import Config
from .delivery import make_router
from .errors import StoreError
from .logs import log_event
from .models import EmailOrigin, SmsRecord, Tally
from .parse import ParseOptions, parse_email
from .store import IngestItem, IngestResult, Router, Store

__all__ = ["DEFAULT_BATCH", "ReleaseResult", "import_emails", "release_reject"]

# Big transactions: the random-keyed indexes make every commit rewrite most of
# their leaf pages, so fewer commits is what makes a large import fast
# (benchmarks/README.md).  10k provider emails are ~50 MB of parsed records at most.
DEFAULT_BATCH = 10_000
_log = logging.getLogger("inbound_mail.import")


def import_emails(
    emails: Iterable[tuple[bytes, EmailOrigin]],
    store: Store,
    options: ParseOptions,
    *,
    route: Router | None = None,
    batch_size: int = DEFAULT_BATCH,
    on_batch: Callable[[IngestResult], None] | None = None,
    verifier: Verifier | None = None,
) -> Tally:
    """Parse, authenticate (with ``verifier``) and store every email; one transaction
    per batch.  Bad emails become rejects, never exceptions; only a store failure
    raises (StoreError).  An email whose verdict must wait (DNS failure) is not
    stored and counts as ``deferred``: importing the same files again picks it up."""
    total = Tally()
    iterator = iter(emails)
    while batch := list(islice(iterator, batch_size)):
        items = []
        deferred = 0
        for raw, origin in batch:
            outcome = parse_email(raw, options)
            checked = verifier.check(raw, outcome) if verifier is not None else outcome
            if isinstance(checked, Deferred):
                deferred += 1
                log_event(
                    _log,
                    logging.WARNING,
                    "auth.deferred",
                    origin=origin.describe(),
                    reason=checked.reason,
                    action="not stored; import it again later",
                )
                continue
            items.append(IngestItem(raw, checked, origin))
        del batch
        result = store.ingest(items, route=route)
        del items
        if on_batch:
            on_batch(result)
        total.add(
            len(result.new), len(result.duplicates), result.skipped, result.rejected, deferred
        )
        # Drop this batch before the next one is read: otherwise two batches are
        # alive at once, and peak memory grows with the batch size twice over.
        del result
    return total


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
    result = store.release(
        reject_id, IngestItem(bytes(reject["raw"]), record, origin), route=make_router(config.sinks)
    )
    if result is None:  # released by someone else since we read it
        return release_reject(config, store, reject_id)
    log_event(_log, logging.WARNING, "reject.released", reject=reject_id, sms=record.id,
              origin=reject["origin"], stored="new" if result.new else "duplicate",
              reason=reject["reason"])  # fmt: skip
    return ReleaseResult(record.id, bool(result.new))
