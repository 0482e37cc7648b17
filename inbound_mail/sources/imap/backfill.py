"""Backfill: read old mail from IMAP folders through the daemon's own pipeline.

Nothing in the mailbox changes (folders are opened read-only) unless
``apply_after`` is set.  The daemon's checkpoints are left alone; already
recorded UIDs are skipped, so an interrupted backfill continues where it
stopped and never stores anything twice.  Folder names resolve through the
server's NAMESPACE like the daemon's (:mod:`inbound_mail.sources.imap.namespace`).

A FETCH the server fails does not end the run: it reconnects and goes on, and an
email the server can never return is fetched alone and, after
:data:`~inbound_mail.sources.imap.sync.MAX_FETCH_FAILURES` failures, stored as an
``unfetchable`` reject (left in the mailbox), as the daemon does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from ...config.model import Config, ParseOptions
from ...errors import ImapError
from ...faults import fault_point
from ...logs import log_event
from ...models import Tally
from ...parse.authenticity import Verifier
from ...store.rows import IngestResult
from ..pool import ParsePool, auto_workers
from .connection import imap_errors
from .sync import FolderSync, SyncOptions, SyncResult
from .worker import AccountWorker

__all__ = ["MAX_RETRIES", "BackfillRequest", "run_backfill"]

#: Reconnects after a failed FETCH, per run.  Each failure counts against the UIDs
#: asked for: one email the server cannot return costs at most
#: 1 + MAX_FETCH_FAILURES of them before it is stored as a reject and passed.
MAX_RETRIES = 100
_log = logging.getLogger("inbound_mail.backfill")


@dataclass(frozen=True, slots=True)
class BackfillRequest:
    account: str
    folders: Sequence[str] = ()
    all_folders: bool = False
    since: date | None = None
    before: date | None = None
    dry_run: bool = False
    apply_after: bool = False
    deliver: bool = True
    workers: int | None = None  # parse processes; None: [parse] workers (inbound_mail.sources.pool)


def run_backfill(
    config: Config,
    request: BackfillRequest,
    *,
    on_found: Callable[[str, int], None] | None = None,
    on_batch: Callable[[str, IngestResult], None] | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Tally]:
    """Backfill the requested folders; returns the counts per folder."""
    account = config.account(request.account)
    options = ParseOptions.from_config(config.parse, account.senders)
    workers = config.parse.workers if request.workers is None else request.workers
    pool = ParsePool(options, auto_workers(workers))
    if not request.dry_run:  # a dry run parses in this process: it records nothing
        pool.start()  # the workers start while this process logs in and searches
    route = None
    if request.deliver:
        from ...delivery import make_router  # the outbox's machinery: only when delivering

        route = make_router(config.sinks)
    worker = AccountWorker(
        account,
        db_path=Path(config.database.path),
        parse_options=options,
        stop=stop or threading.Event(),
        route=route,
        verifier=Verifier.from_config(config.parse, account),
        pool=pool,
    )
    sync_options = SyncOptions(
        since=request.since,
        before=request.before,
        apply_after=request.apply_after,
        move_checkpoint=False,
        dry_run=request.dry_run,
    )

    def batch_done(folder: str, result: IngestResult) -> None:
        fault_point("backfill-batch")
        if on_batch:
            on_batch(folder, result)

    totals: dict[str, Tally] = {}
    folders: list[str] | None = None
    with pool:
        for attempt in range(MAX_RETRIES + 1):
            failures = worker.fetch_failures.total
            syncer: FolderSync | None = None
            try:
                with (
                    worker.connected_syncer(on_batch=batch_done, on_found=on_found) as (
                        client,
                        syncer,
                    ),
                    imap_errors(account),
                ):
                    if folders is None:
                        folders = list(request.folders) or (
                            _all_folders(client) if request.all_folders else list(account.folders)
                        )
                    while folders:
                        # Keyed by the server's name: `Sub` is `INBOX.Sub` under such a namespace.
                        result = _backfill_folder(syncer, folders[0], sync_options)
                        totals.setdefault(result.folder, Tally()).merge(result.tally)
                        folders.pop(0)
                return totals
            except ImapError as exc:
                # A FETCH the server failed (an email it cannot return, a dropped
                # connection): reconnect and go on, as the daemon does.  The emails
                # stored stay stored; a UID that keeps failing is fetched alone and,
                # after MAX_FETCH_FAILURES, stored as an `unfetchable` reject.  A dry
                # run stores nothing, that reject included: it reports the error.
                retry = worker.fetch_failures.total > failures and not request.dry_run
                if not retry or attempt == MAX_RETRIES:
                    raise
                if syncer is not None and syncer.current is not None:
                    done = syncer.current
                    totals.setdefault(done.folder, Tally()).merge(done.tally)
                log_event(
                    _log,
                    logging.WARNING,
                    "backfill.fetch_failed",
                    account=account.name,
                    error=exc.reason,
                    action="reconnecting; the rest of the folder follows",
                )
    return totals


def _backfill_folder(syncer: FolderSync, folder: str, options: SyncOptions) -> SyncResult:
    return syncer.sync(folder, options)


def _all_folders(client: object) -> list[str]:
    folders = []
    for flags, _delimiter, name in client.list_folders():  # type: ignore[attr-defined]
        if b"\\Noselect" not in flags and b"\\NonExistent" not in flags:
            folders.append(name)
    return sorted(folders)
