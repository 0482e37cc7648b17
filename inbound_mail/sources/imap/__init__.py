"""The IMAP source: :mod:`.connection` (TLS, login), :mod:`.oauth` (SASL
XOAUTH2 / OAUTHBEARER), :mod:`.namespace` (folder names), :mod:`.sync` (search,
fetch, store), :mod:`.acks` (mark, move or delete once stored), :mod:`.worker`
(the per-account IDLE or polling loop) and :mod:`.backfill` (re-read a date range)."""
