"""The SQLite store: :mod:`.db` holds :class:`~inbound_mail.store.db.Store`
(records, rejects, checkpoints, outbox), :mod:`.schema` the tables and their
migrations, :mod:`.rows` the row <-> object conversions and query filters,
:mod:`.lock` the daemon's single-instance lock."""
