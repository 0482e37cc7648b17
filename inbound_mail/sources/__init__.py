"""Where emails come from: :mod:`.imap` (the daemon's mailboxes: connection,
sync, worker, acknowledgements, backfill) and :mod:`.local` (mbox, Maildir,
.eml files); :mod:`.importer` runs local emails through parse and store, and
:mod:`.inflight` keeps an email that crashes the parser from crashing it again."""

from __future__ import annotations

__all__ = ["DEFAULT_BATCH"]

# Emails per import transaction, as a backfill's `fetch_batch`.  Fewer, bigger
# commits rewrite fewer leaf pages of the random-keyed indexes, but with parse
# workers the last transaction is a tail nothing overlaps: at 10,000 a 10k import
# spent a fifth of its time on that one commit, while at 2,000 a 100k import is as
# fast as at 10,000 (more write calls, as much wall time) in 20 MB less
# (benchmarks/README.md).  Here, not in .importer, so that the CLI shows it without
# importing the pipeline.
DEFAULT_BATCH = 2_000
