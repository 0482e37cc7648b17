"""Where emails come from: :mod:`.imap` (the daemon's mailboxes: connection,
sync, worker, acknowledgements, backfill) and :mod:`.local` (mbox, Maildir,
.eml files); :mod:`.importer` runs local emails through parse and store, and
:mod:`.inflight` keeps an email that crashes the parser from crashing it again."""
