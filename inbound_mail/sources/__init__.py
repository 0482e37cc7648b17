"""Where emails come from: :mod:`.imap` (the daemon's mailboxes: connection,
sync, worker, acknowledgements, backfill) and :mod:`.local` (mbox, Maildir,
.eml files); :mod:`.importer` runs local emails through parse and store, and
:mod:`.inflight` keeps an email that crashes the parser from crashing it again."""

from __future__ import annotations

__all__ = ["DEFAULT_BATCH"]

# Big transactions: the random-keyed indexes make every commit rewrite most of
# their leaf pages, so fewer commits is what makes a large import fast
# (benchmarks/README.md).  10k provider emails are ~50 MB of parsed records at most.
# Here, not in .importer, so that the CLI shows it without importing the pipeline.
DEFAULT_BATCH = 10_000
