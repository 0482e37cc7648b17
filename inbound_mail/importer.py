"""The local import pipeline: emails from files -> parse -> store, in batches.

Streaming end to end: emails are read one at a time and committed a batch at a
time, so memory stays flat whatever the size of the export.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import islice

from .models import EmailOrigin, Tally
from .parse import ParseOptions, parse_email
from .store import IngestItem, IngestResult, Router, Store

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
    on_parsed: Callable[[], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Tally:
    """Parse and store every email; one transaction per batch.  Bad emails become
    rejects, never exceptions; only a store failure raises (StoreError).

    ``on_parsed`` is called after each email is parsed (a progress bar that
    moves per email, not per transaction); once ``should_stop`` returns True, the
    emails parsed so far are committed and no more are read: a rerun of the same
    import stores the rest, and recognises what is stored already."""
    total = Tally()
    iterator = iter(emails)
    while True:
        items: list[IngestItem] = []
        for raw, origin in islice(iterator, batch_size):
            items.append(IngestItem(raw, parse_email(raw, options), origin))
            if on_parsed:
                on_parsed()
            if should_stop and should_stop():
                break
        if not items:
            break
        result = store.ingest(items, route=route)
        del items
        if on_batch:
            on_batch(result)
        total.add(len(result.new), len(result.duplicates), result.skipped, result.rejected)
        # Drop this batch before the next one is read: otherwise two batches are
        # alive at once, and peak memory grows with the batch size twice over.
        del result
        if should_stop and should_stop():
            break
    return total
