"""The local import pipeline: emails from files -> parse -> store, in batches.

Streaming end to end: emails are read one at a time and committed a batch at a
time, so memory stays flat whatever the size of the export.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from itertools import islice

from .authenticity import Deferred, Verifier
from .logs import log_event
from .models import EmailOrigin, Tally
from .parse import ParseOptions, parse_email
from .store import IngestItem, IngestResult, Router, Store

__all__ = ["DEFAULT_BATCH", "import_emails"]

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
