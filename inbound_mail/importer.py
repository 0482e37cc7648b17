"""The local import pipeline: emails from files -> parse -> store, in batches.

Streaming end to end: emails are read one at a time and committed a batch at a
time, so memory stays flat whatever the size of the export.

The IMAP ``max_size`` rule holds here too: an email over ``max_size`` bytes
(default 1 MiB, ``import --max-size`` raises it) is never parsed; only its
header block is read, and kept as the raw bytes of a reject that says so
(an email from another sender is skipped, as usual).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from email.parser import BytesHeaderParser
from email.policy import compat32
from itertools import islice

from .models import EmailOrigin, ParseOutcome, Rejected, Skipped, Tally
from .parse import ParseOptions, parse_email, sender_matches
from .store import IngestItem, IngestResult, Router, Store

__all__ = ["DEFAULT_BATCH", "DEFAULT_MAX_SIZE", "import_emails", "oversized_outcome"]

DEFAULT_MAX_SIZE = 1024 * 1024  # as accounts[].max_size
HEADER_LIMIT = 256 * 1024  # the header block kept of an oversized email, at most
_END_OF_HEADER = re.compile(rb"\r?\n\r?\n")

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
    max_size: int = DEFAULT_MAX_SIZE,
    on_batch: Callable[[IngestResult], None] | None = None,
    on_parsed: Callable[[], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Tally:
    """Parse and store every email; one transaction per batch.  Bad emails become
    rejects, never exceptions; only a store failure raises (StoreError).  An
    email over ``max_size`` bytes is not parsed (see the module docstring).

    ``on_parsed`` is called after each email is parsed (a progress bar that
    moves per email, not per transaction); once ``should_stop`` returns True, the
    emails parsed so far are committed and no more are read: a rerun of the same
    import stores the rest, and recognises what is stored already."""
    total = Tally()
    iterator = iter(emails)
    while True:
        items: list[IngestItem] = []
        for raw, origin in islice(iterator, batch_size):
            items.append(_item(raw, origin, options, max_size))
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
    message = BytesHeaderParser(policy=compat32).parsebytes(header)
    sender = sender_matches(message.get_all("From", []), options.senders)
    message_id = (message.get("Message-ID") or "").strip() or None
    if sender is None:
        return Skipped(reason="not from a configured sender", message_id=message_id)
    return Rejected(
        reason=(
            f"email is {size} bytes, over {setting} = {max_size}; "
            f"only its headers were read (raise {setting} to import it)"
        ),
        sender=sender,
        message_id=message_id,
    )
