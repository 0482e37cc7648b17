"""The local import pipeline: emails from files -> parse -> store, in batches.

Streaming end to end: emails are read one at a time and committed a batch at a
time, so memory stays flat whatever the size of the export.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import islice

from .inflight import parse_recorded, split_crashed
from .models import EmailOrigin, Tally
from .parse import ParseOptions
from .store import IngestResult, Router, Store

__all__ = ["DEFAULT_BATCH", "import_emails"]

# Big transactions: the random-keyed indexes make every commit rewrite most of
# their leaf pages, so fewer commits is what makes a large import fast
# (benchmarks/README.md).  10k provider emails are ~50 MB of parsed records at most.
DEFAULT_BATCH = 10_000


def import_emails(
    emails: Iterable[tuple[bytes, EmailOrigin]],
    store: Store,
    options: ParseOptions,
    *,
    route: Router | None = None,
    batch_size: int = DEFAULT_BATCH,
    on_batch: Callable[[IngestResult], None] | None = None,
) -> Tally:
    """Parse and store every email; one transaction per batch (plus the one that
    records the batch in flight before its parse).  Bad emails become rejects,
    never exceptions; only a store failure raises (StoreError)."""
    total = Tally()
    iterator = iter(emails)
    while batch := list(islice(iterator, batch_size)):
        # Emails a killed import was parsing go one at a time (inbound_mail.inflight).
        groups = split_crashed(store, batch)
        del batch
        while groups:
            items = parse_recorded(store, groups.pop(0), options)
            result = store.ingest(items, route=route)
            del items
            if on_batch:
                on_batch(result)
            total.add(len(result.new), len(result.duplicates), result.skipped, result.rejected)
            # Drop this batch before the next one is read: otherwise two batches are
            # alive at once, and peak memory grows with the batch size twice over.
            del result
    return total
