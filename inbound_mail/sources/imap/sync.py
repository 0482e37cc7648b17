"""One catch-up pass over one IMAP folder: search, fetch, parse, store, then acknowledge.

The order is what makes the feed lossless and duplicate-free:

1. SELECT (the configured name resolved through the server's NAMESPACE, see
   :mod:`inbound_mail.sources.imap.namespace`); read UIDVALIDITY and UIDNEXT.
   Acknowledgements owed from an earlier pass (stored, but the ``after`` action
   never confirmed) are applied first -- unless the server refused them and
   their retry is not due yet (:class:`~inbound_mail.sources.imap.acks.AckRetries`).
2. A changed UIDVALIDITY invalidates the checkpoint: the folder is rescanned from
   UID 1 (dedup keeps that free of duplicates) and a warning is logged.
3. ``UID SEARCH`` for the configured senders from ``last+1:*``; UIDs at or below
   the checkpoint are dropped (the range always returns the last message), and
   so are UIDs already recorded, so an interrupted backfill continues.
4. Sizes first, from one ``UID SEARCH UID a:b LARGER n`` per chunk (``n`` the
   smaller of :data:`SMALL_EMAIL` and ``max_size``): only the few larger emails
   have their ``RFC822.SIZE`` fetched, and one over ``max_size`` is rejected
   with its headers, its body never fetched.  The rest is fetched with
   ``BODY.PEEK[]`` (which never sets ``\\Seen``) in chunks bounded by count and
   bytes (an email the SEARCH did not name counts as ``n`` bytes: an upper bound).
   Asking every email's size with a FETCH costs the writer a parsed response
   line per email; the SEARCH answers in one line.
5. Each chunk is parsed and stored in ONE transaction together with the new
   checkpoint and the acknowledgements it now owes.  Before the parse its
   emails are recorded in flight (:mod:`inbound_mail.sources.inflight`): after a crash,
   the emails that were in flight are parsed one at a time, and one the parser
   died on twice becomes a reject.
6. Only then is ``after`` applied (seen / move / delete) -- and only to mail
   that produced an SMS: other senders' mail and rejects are never touched.
   A refused ``after`` is logged (folder, the server's answer, the config key)
   and retried later with backoff; it never stops the pass or new mail.
7. Mail that reaches the folder during the pass is announced by the server in
   an untagged ``EXISTS`` (or ``RECENT``) in reply to whatever command was
   running, and never repeated.  :attr:`SyncResult.arrived` says so, and the
   worker passes again before it re-enters IDLE.  Reading those responses
   costs nothing: imaplib keeps them anyway.  (Mail that comes after the
   pass's last command is the worker's to catch: see its NOOP before IDLE.)

Between parse and store, each SMS goes through the account's
:class:`~inbound_mail.parse.authenticity.Verifier`.  One whose verdict must wait (a
DNS timeout or SERVFAIL while fetching its DKIM key) is neither stored nor
acknowledged, and the checkpoint stays below its UID for the rest of the pass,
so the next pass fetches it again (UIDs stored meanwhile are skipped as known).

A FETCH that fails marks every UID it asked for.  Chunks holding a marked UID
are then fetched one UID at a time, so one email the server cannot return
(a corrupt file, an "Internal error") costs only itself: after
:data:`MAX_FETCH_FAILURES` failures on its own it becomes a reject (no raw
bytes: the server never gave any) and the checkpoint moves past it.  The
email itself stays in the mailbox, untouched, for a person to look at.
"""

from __future__ import annotations

import imaplib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any

from imapclient import IMAPClient

from ...config.model import AccountConfig, ParseOptions
from ...faults import fault_point
from ...logs import log_event
from ...models import EmailOrigin, ParseOutcome, Rejected, SmsRecord, Tally
from ...parse.authenticity import Deferred, Verifier
from ...parse.limits import scan_headers
from ...parse.message import sender_matches
from ...store.db import Store
from ...store.rows import Checkpoint, IngestItem, IngestResult, PendingAck, Router
from ..inflight import parse_recorded, split_runs, submit_recorded
from ..pool import ParsePool
from .acks import AckRetries, apply_acks
from .bodies import fetch_bodies
from .connection import server_text
from .namespace import FolderNames, folder_names
from .search import senders_criteria

__all__ = ["FolderSync", "SyncOptions", "SyncResult"]

_CHUNK_BYTES = 8 * 1024 * 1024
SMALL_EMAIL = 32 * 1024
"""Emails up to this size are fetched without asking their size first (see step 4)."""
# With a parse pool, one FETCH asks for at most this many bodies: the next FETCH
# runs while the workers parse the last one.
_POOL_FETCH = 250
MAX_FETCH_FAILURES = 3
SEARCH_WINDOW = 10_000


class FetchFailures(dict[tuple[str, int, int], int]):
    """(folder, uidvalidity, uid) -> FETCHes of that email that failed; ``total``
    counts every failure ever recorded (``backfill`` retries a pass that failed so)."""

    total: int = 0


_log = logging.getLogger("inbound_mail.imap")


@dataclass(frozen=True, slots=True)
class SyncOptions:
    """How a pass behaves.  The daemon uses the defaults; ``backfill`` changes them."""

    since: date | None = None
    before: date | None = None
    apply_after: bool = True
    move_checkpoint: bool = True
    dry_run: bool = False


@dataclass(slots=True)
class SyncResult:
    """What a pass over one folder did."""

    folder: str
    uidvalidity: int = 0
    tally: Tally = field(default_factory=Tally)
    arrived: bool = False
    """The server announced new mail during the pass: pass again before waiting."""


BatchCallback = Callable[[str, IngestResult], None]


class FolderSync:
    """Runs sync passes for one account over an already logged-in client."""

    def __init__(
        self,
        client: IMAPClient,
        account: AccountConfig,
        store: Store,
        parse_options: ParseOptions,
        *,
        route: Router | None = None,
        on_batch: BatchCallback | None = None,
        on_found: Callable[[str, int], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        fetch_failures: FetchFailures | None = None,
        on_parsed: Callable[[], None] | None = None,
        verifier: Verifier | None = None,
        ack_retries: AckRetries | None = None,
        pool: ParsePool | None = None,
    ) -> None:
        self.client = client
        self.pool = pool  # parse processes (backfill); None: parse inline
        self.verifier = verifier
        # (folder, uidvalidity) -> lowest UID deferred in this pass: the checkpoint stays below.
        self._deferred: dict[tuple[str, int], int] = {}
        self.held_back = 0  # emails deferred so far, each time: what a pass's tally counts
        self.account = account
        self.store = store
        self.parse_options = parse_options
        self.route = route
        self.on_batch = on_batch
        self.on_found = on_found
        self.should_stop = should_stop
        # (folder, uidvalidity, uid) -> failed FETCHes; owned by the worker, so
        # the count survives the reconnect that a failed FETCH usually causes.
        self.fetch_failures = FetchFailures() if fetch_failures is None else fetch_failures
        self.on_parsed = on_parsed  # after every email parsed: progress for the watchdog
        # Per folder, owned by the worker: a refused `after` keeps its backoff
        # across the reconnects.
        self.ack_retries = AckRetries() if ack_retries is None else ack_retries
        self._names: FolderNames | None = None
        self.current: SyncResult | None = None  # the pass in progress, or the last one

    @property
    def names(self) -> FolderNames:
        """The server's namespace, asked once per session (one NAMESPACE command)."""
        if self._names is None:
            self._names = folder_names(self.client)
        return self._names

    def resolve(self, folder: str) -> str:
        """The server's name for a configured folder (``Sub`` -> ``INBOX.Sub``)."""
        return self.names.resolve(folder)

    def sync(self, folder: str, options: SyncOptions = SyncOptions()) -> SyncResult:
        """One pass over ``folder``; raises the client's errors for the caller to translate.

        ``folder`` is resolved through the server's namespace first; the result,
        the checkpoint and the records name the server's folder.
        """
        self.current = None
        readonly = options.dry_run or not options.apply_after or self.account.after == "none"
        folder = self.resolve(folder)
        selected = self.client.select_folder(folder, readonly=readonly)
        result = SyncResult(folder=folder, uidvalidity=int(selected[b"UIDVALIDITY"]))
        self.current = result  # what a pass that fails has done so far
        self._deferred.pop((folder, result.uidvalidity), None)
        arrivals = _Arrivals.after_select(self.client, selected)
        self._pass(folder, result, selected, options, readonly)
        result.arrived = arrivals.seen(self.client)
        return result

    def _pass(
        self,
        folder: str,
        result: SyncResult,
        selected: dict[bytes, Any],
        options: SyncOptions,
        readonly: bool,
    ) -> None:
        if not readonly:
            self._apply_owed_acks(folder, result.uidvalidity)
        last_uid = self._last_uid(folder, result, options)
        uid_next = int(selected.get(b"UIDNEXT", 0))
        if last_uid and 0 < uid_next <= last_uid + 1:
            return  # nothing arrived since the checkpoint: no SEARCH needed
        for low, high in _windows(last_uid + 1, uid_next):
            if self.should_stop():  # a warm stop: the committed batches stand, the rest waits
                break
            uids = self._new_uids(folder, result.uidvalidity, low, high, options)
            if self.on_found and uids:
                self.on_found(folder, len(uids))
            groups = self._groups(folder, result.uidvalidity, uids, options)
            self._store_groups(folder, result, groups, options, readonly)

    def _store_groups(
        self,
        folder: str,
        result: SyncResult,
        groups: Iterator[list[int]],
        options: SyncOptions,
        readonly: bool,
    ) -> None:
        """Fetch, parse and store each group of UIDs in turn.  With a parse pool the
        next group is fetched and shipped before the last one is stored, so the
        workers parse while the writer commits; groups are still stored (and the
        checkpoint moved) in UID order, one transaction each."""
        ahead = 1 if self.pool is not None and self.pool.workers > 1 and not options.dry_run else 0
        started: deque[Callable[[], IngestResult]] = deque()
        for uids in groups:
            if self.should_stop():
                break
            try:
                group = self._start_group(folder, result.uidvalidity, uids, options, readonly)
            except Exception:
                # The groups already fetched are stored before the error ends the pass.
                while started:
                    self._finish_group(folder, result, started.popleft())
                raise
            started.append(group)
            while len(started) > ahead:
                self._finish_group(folder, result, started.popleft())
        while started:  # a stop too leaves nothing fetched unstored
            self._finish_group(folder, result, started.popleft())

    def _finish_group(
        self, folder: str, result: SyncResult, finish: Callable[[], IngestResult]
    ) -> None:
        held = self.held_back
        batch = finish()
        result.tally.add_batch(batch, deferred=self.held_back - held)

    # -- steps -------------------------------------------------------------
    def _apply_owed_acks(self, folder: str, uidvalidity: int) -> int:
        owed = self.store.pending_acks(self.account.name, folder)
        if not owed:
            return 0
        stale = [ack for ack in owed if ack.uidvalidity != uidvalidity]
        if stale:
            log_event(
                _log,
                logging.WARNING,
                "imap.acks_dropped",
                account=self.account.name,
                folder=folder,
                count=len(stale),
                reason="UIDVALIDITY changed",
            )
            self.store.clear_acks(stale)
        # The `after` in force decides, not the one at commit time: fixing the
        # config after a refusal (say, a move target) settles what is owed.
        current = [
            ack if ack.action == self.account.after else replace(ack, action=self.account.after)
            for ack in owed
            if ack.uidvalidity == uidvalidity
        ]
        if not current:
            self.ack_retries.forget(folder)
        return self._ack(folder, current)

    def _ack(self, folder: str, acks: Sequence[PendingAck]) -> int:
        """Apply ``acks`` now, or leave them owed while a refusal's backoff runs."""
        if not acks:
            return 0
        if not self.ack_retries.due(folder):
            self.ack_retries.deferred(folder, self._owed(folder))
            return 0
        try:
            apply_acks(self.client, folder, acks, self.resolve)
        except imaplib.IMAP4.abort:
            raise  # the connection is gone: the session ends, the acks stay owed
        except imaplib.IMAP4.error as exc:  # refused: new mail must keep flowing
            self._ack_refused(folder, acks, exc)
            return 0
        self.store.clear_acks(acks)
        self.ack_retries.succeeded(folder)
        return len(acks)

    def _ack_refused(self, folder: str, acks: Sequence[PendingAck], exc: Exception) -> None:
        actions = sorted({ack.action for ack in acks})
        action = ", ".join(
            f"move to {self.resolve(a.removeprefix('move:'))!r}" if a.startswith("move:") else a
            for a in actions
        )
        failure = self.ack_retries.refused(folder, action, server_text(exc), self._owed(folder))
        log_event(
            _log,
            logging.WARNING,
            "imap.ack_refused",
            account=self.account.name,
            folder=folder,
            action=action,
            answer=failure.answer,
            owed=failure.owed,
            retry_in=f"{max(0.0, failure.retry_at - time.monotonic()):.0f}s",
            fix=f"make the action possible on the server, or change {self.account.key('after')}",
        )

    def _owed(self, folder: str) -> int:
        return len(self.store.pending_acks(self.account.name, folder))

    def _last_uid(self, folder: str, result: SyncResult, options: SyncOptions) -> int:
        checkpoint = self.store.get_checkpoint(self.account.name, folder)
        if checkpoint is None or not options.move_checkpoint:
            return 0
        if checkpoint.uidvalidity != result.uidvalidity:
            log_event(
                _log,
                logging.WARNING,
                "imap.uidvalidity_changed",
                account=self.account.name,
                folder=folder,
                old=checkpoint.uidvalidity,
                new=result.uidvalidity,
                action="rescanning the folder; dedup prevents duplicates",
            )
            return 0
        return checkpoint.last_uid

    def _new_uids(
        self, folder: str, uidvalidity: int, low: int, high: int | None, options: SyncOptions
    ) -> list[int]:
        """The senders' UIDs in ``low:high`` that are not recorded yet."""
        uids = [uid for uid in self._search(low, high, options) if uid >= low]
        known = self.store.known_uids(self.account.name, folder, uidvalidity, uids)
        return [uid for uid in uids if uid not in known]

    def _search(self, low: int, high: int | None, options: SyncOptions) -> list[int]:
        # "low:*" always matches the last message, even below low: the caller filters.
        criteria: list[Any] = [*senders_criteria(self.account.senders)]
        criteria += ["UID", f"{low}:{high if high is not None else '*'}"]
        if options.since:
            criteria += ["SENTSINCE", options.since]
        if options.before:
            criteria += ["SENTBEFORE", options.before]
        return sorted(int(uid) for uid in self.client.search(criteria))

    def _groups(
        self, folder: str, uidvalidity: int, uids: list[int], options: SyncOptions
    ) -> Iterator[list[int]]:
        """``uids`` in chunks of ``fetch_batch``, each cut into the groups stored
        in one transaction each."""
        size = self.account.fetch_batch
        for start in range(0, len(uids), size):
            chunk = uids[start : start + size]
            if any((folder, uidvalidity, uid) in self.fetch_failures for uid in chunk):
                # One at a time, so an email the server cannot return costs only itself.
                yield from ([uid] for uid in chunk)
            elif options.dry_run:
                yield chunk
            else:
                # Each email the parser died on alone, in UID order: the checkpoint never
                # passes one before it is stored (inbound_mail.sources.inflight).
                origins = [self._origin(folder, uidvalidity, uid) for uid in chunk]
                crashed = {origin.uid for origin in self.store.parse_crashes(origins)}
                yield from split_runs(chunk, crashed.__contains__)

    def _start_group(
        self, folder: str, uidvalidity: int, uids: list[int], options: SyncOptions, readonly: bool
    ) -> Callable[[], IngestResult]:
        """Fetch ``uids`` and start their parse; the returned function waits for it,
        then authenticates, stores and acknowledges."""
        try:
            parsed = self._fetch_items(folder, uidvalidity, uids, record=not options.dry_run)
        except Exception as exc:
            self._fetch_failed(folder, uidvalidity, uids, exc)
            raise
        fault_point("after-fetch")
        return lambda: self._store_group(folder, uidvalidity, uids, parsed(), options, readonly)

    def _store_group(
        self,
        folder: str,
        uidvalidity: int,
        uids: list[int],
        items: list[IngestItem],
        options: SyncOptions,
        readonly: bool,
    ) -> IngestResult:
        checked = self._authenticate(folder, uidvalidity, items)
        # Recorded in flight, parsed, then held back: no crash to count at a restart.
        kept = {item.origin for item in checked}
        held = [item.origin for item in items if item.origin not in kept]
        self.held_back += len(held)
        items = checked
        if options.dry_run:
            return _dry_result(items)
        acks = self._acks_for(folder, uidvalidity, items, options, readonly)
        lowest_held = self._deferred.get((folder, uidvalidity))
        last = max(uids) if lowest_held is None else min(max(uids), lowest_held - 1)
        checkpoint = (
            Checkpoint(self.account.name, folder, uidvalidity, last)
            if options.move_checkpoint and last > 0
            else None
        )
        result = self.store.ingest(
            items, route=self.route, checkpoint=checkpoint, acks=acks, not_stored=held
        )
        fault_point("after-commit")
        if self.on_batch:
            self.on_batch(folder, result)
        self._ack(folder, acks)
        return result

    def _authenticate(
        self, folder: str, uidvalidity: int, items: list[IngestItem]
    ) -> list[IngestItem]:
        """The verifier's outcome for each item; deferred ones are dropped and held back."""
        if self.verifier is None:
            return items
        kept = []
        for item in items:
            outcome = self.verifier.check(item.raw, item.outcome)
            if self.on_parsed is not None:  # a DNS lookup may wait: progress per email
                self.on_parsed()
            if isinstance(outcome, Deferred):
                uid = item.origin.uid or 0
                key = (folder, uidvalidity)
                self._deferred[key] = min(self._deferred.get(key, uid), uid)
                log_event(_log, logging.WARNING, "auth.deferred", account=self.account.name,
                          folder=folder, uid=uid, reason=outcome.reason,
                          action="left unacknowledged; tried again on the next pass")  # fmt: skip
                continue
            kept.append(item if outcome is item.outcome else replace(item, outcome=outcome))
        return kept

    def _fetch_items(
        self, folder: str, uidvalidity: int, uids: list[int], *, record: bool
    ) -> Callable[[], list[IngestItem]]:
        """Fetch ``uids`` (every FETCH is sent now) and start their parse; the returned
        function waits for the items, in UID order."""
        sizes, gone = self._large_sizes(uids)
        small = [
            uid for uid in uids if uid not in gone and sizes.get(uid, 0) <= self.account.max_size
        ]
        large = [uid for uid in uids if sizes.get(uid, 0) > self.account.max_size]
        count = _POOL_FETCH if self.pool is not None and record else len(small)
        bound = min(SMALL_EMAIL, self.account.max_size)
        # Every FETCH is sent before the first parse is awaited: with a pool, the
        # workers parse one group while the next is fetched.
        parsing = [
            self._fetch_bodies(folder, uidvalidity, group, record=record)
            for group in _by_bytes(small, lambda uid: sizes.get(uid, bound), count)
        ]
        oversized = self._fetch_oversized(folder, uidvalidity, large, sizes)
        for uid in uids:
            self.fetch_failures.pop((folder, uidvalidity, uid), None)

        def items() -> list[IngestItem]:
            found = [item for parsed in parsing for item in parsed()] + oversized
            found.sort(key=lambda item: item.origin.uid or 0)
            return found

        return items

    def _large_sizes(self, uids: list[int]) -> tuple[dict[int, int], set[int]]:
        """The size of each email of ``uids`` over ``min(SMALL_EMAIL, max_size)`` bytes,
        and the UIDs among those that were expunged before their size was read.

        One SEARCH names the large ones; only they are FETCHed for ``RFC822.SIZE``.
        An email expunged after the SEARCH is simply missing from the body FETCH.
        """
        bound = min(SMALL_EMAIL, self.account.max_size)
        wanted = set(uids)
        found = self.client.search(["UID", f"{min(uids)}:{max(uids)}", "LARGER", bound])
        large = sorted(uid for uid in (int(u) for u in found) if uid in wanted)
        if not large:
            return {}, set()
        fetched = self.client.fetch(large, ["RFC822.SIZE"])
        sizes = {
            uid: int(fetched[uid][b"RFC822.SIZE"])
            for uid in large
            if b"RFC822.SIZE" in fetched.get(uid, {})
        }
        return sizes, {uid for uid in large if uid not in sizes}

    def _fetch_failed(self, folder: str, uidvalidity: int, uids: list[int], exc: Exception) -> None:
        """Count the failure against each UID; give up on a UID that fails alone too often."""
        self.fetch_failures.total += 1
        for uid in uids:
            key = (folder, uidvalidity, uid)
            self.fetch_failures[key] = self.fetch_failures.get(key, 0) + 1
        if (
            len(uids) != 1
            or self.fetch_failures[(folder, uidvalidity, uids[0])] < MAX_FETCH_FAILURES
        ):
            return
        del self.fetch_failures[(folder, uidvalidity, uids[0])]
        reason = (
            f"the server failed {MAX_FETCH_FAILURES} times to return this email "
            f"({type(exc).__name__}: {exc}); it is left in the mailbox, untouched"
        )
        origin = self._origin(folder, uidvalidity, uids[0])
        stored = self.store.ingest(
            [IngestItem(b"", Rejected(reason=reason, code="unfetchable"), origin)]
        )
        if self.current is not None:
            self.current.tally.add_batch(stored)
        log_event(_log, logging.ERROR, "imap.unfetchable", account=self.account.name,
                  folder=folder, uid=uids[0], reason=reason)  # fmt: skip

    def _fetch_bodies(
        self, folder: str, uidvalidity: int, uids: list[int], *, record: bool
    ) -> Callable[[], list[IngestItem]]:
        """Fetch ``uids`` and start their parse; the returned function waits for it."""
        if not uids:
            return list
        fetched = fetch_bodies(self.client, uids)
        emails = []
        for uid in uids:
            raw = fetched.get(uid)
            if raw is None:  # expunged by someone else between SEARCH and FETCH
                continue
            emails.append((raw, self._origin(folder, uidvalidity, uid)))
        if self.pool is not None and record:
            pending = submit_recorded(self.store, emails, self.pool)

            def parsed() -> list[IngestItem]:
                items = pending()
                for _ in items if self.on_parsed is not None else ():
                    self.on_parsed()  # type: ignore[misc]
                return items

            return parsed
        items = parse_recorded(
            self.store, emails, self.parse_options, record=record, on_parsed=self.on_parsed
        )
        return lambda: items

    def _fetch_oversized(
        self, folder: str, uidvalidity: int, uids: list[int], sizes: dict[int, int]
    ) -> list[IngestItem]:
        if not uids:
            return []
        fetched = self.client.fetch(uids, ["BODY.PEEK[HEADER]"])
        items = []
        for uid in uids:
            header = bytes(fetched.get(uid, {}).get(b"BODY[HEADER]", b""))
            size = sizes[uid]
            outcome = self._oversized_outcome(header, size)
            if outcome is not None:
                items.append(IngestItem(header, outcome, self._origin(folder, uidvalidity, uid)))
        return items

    def _oversized_outcome(self, header: bytes, size: int) -> ParseOutcome | None:
        scan = scan_headers(header)  # bounded work, whatever the size of the header block
        senders = self.parse_options.senders
        sender = None if scan.from_oversized else sender_matches(scan.from_values, senders)
        if sender is None:
            return None  # SEARCH FROM matched a display name: not ours, left alone
        reason = (
            f"email is {size} bytes, over {self.account.key('max_size')} = "
            f"{self.account.max_size}; "
            "only its headers were fetched (raise max_size to import it)"
        )
        return Rejected(
            reason=reason,
            sender=sender,
            message_id=(scan.message_id or "").strip() or None,
            code="oversized",
        )

    def _acks_for(
        self,
        folder: str,
        uidvalidity: int,
        items: list[IngestItem],
        options: SyncOptions,
        readonly: bool,
    ) -> list[PendingAck]:
        if readonly or not options.apply_after or self.account.after == "none":
            return []
        return [
            PendingAck(
                self.account.name, folder, uidvalidity, item.origin.uid or 0, self.account.after
            )
            for item in items
            if isinstance(item.outcome, SmsRecord)
        ]

    def _origin(self, folder: str, uidvalidity: int, uid: int) -> EmailOrigin:
        return EmailOrigin(
            kind="imap", account=self.account.name, folder=folder, uidvalidity=uidvalidity, uid=uid
        )


@dataclass(frozen=True, slots=True)
class _Arrivals:
    """Did the server announce new mail after the SELECT?  Read from what imaplib kept.

    imaplib appends every untagged response to ``untagged_responses`` (reset by
    SELECT) and imapclient never pops ``EXISTS``, ``RECENT`` or ``EXPUNGE``.  The
    mailbox grew when the last ``EXISTS`` exceeds the count at SELECT less the
    expunges since (a server may restate a count that only shrank), or when a
    ``RECENT`` exceeds the count at SELECT.
    """

    exists: int
    recent: int
    marks: tuple[int, int, int]  # how many EXISTS, RECENT, EXPUNGE the SELECT left

    @classmethod
    def after_select(cls, client: IMAPClient, selected: dict[bytes, Any]) -> _Arrivals:
        kept = _untagged(client)
        return cls(
            exists=int(selected.get(b"EXISTS", 0)),
            recent=int(selected.get(b"RECENT", 0)),
            marks=tuple(len(kept.get(key, ())) for key in _COUNTS),  # type: ignore[arg-type]
        )

    def seen(self, client: IMAPClient) -> bool:
        kept = _untagged(client)
        lists = [kept.get(key, []) for key in _COUNTS]
        if any(len(values) < mark for values, mark in zip(lists, self.marks, strict=True)):
            return True  # something else consumed them: pass again rather than miss mail
        exists, recent, expunged = (
            values[mark:] for values, mark in zip(lists, self.marks, strict=True)
        )
        counts = [_number(value) for value in exists]
        if counts and counts[-1] > self.exists - len(expunged):
            return True
        return any(_number(value) > self.recent for value in recent)


_COUNTS = ("EXISTS", "RECENT", "EXPUNGE")


def _untagged(client: IMAPClient) -> dict[str, list[Any]]:
    kept = getattr(getattr(client, "_imap", None), "untagged_responses", None)
    return kept if isinstance(kept, dict) else {}


def _number(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError):
        return 0


def _windows(low: int, uid_next: int) -> Iterator[tuple[int, int | None]]:
    """UID ranges of at most SEARCH_WINDOW, the last one open-ended (``low:*``), so a
    100k-message folder never has its whole SEARCH result in memory at once."""
    while uid_next > 0 and low + SEARCH_WINDOW < uid_next:
        yield low, low + SEARCH_WINDOW - 1
        low += SEARCH_WINDOW
    yield low, None


def _by_bytes(uids: list[int], size: Callable[[int], int], count: int) -> list[list[int]]:
    """Split a chunk so one FETCH never holds more than ~8 MiB of bodies in memory,
    nor more than ``count`` of them.  ``size`` is each email's size or a bound on it."""
    groups: list[list[int]] = [[]]
    total = 0
    for uid in uids:
        nbytes = size(uid)
        if groups[-1] and (total + nbytes > _CHUNK_BYTES or len(groups[-1]) >= count):
            groups.append([])
            total = 0
        groups[-1].append(uid)
        total += nbytes
    return [group for group in groups if group]


def _dry_result(items: list[IngestItem]) -> IngestResult:
    result = IngestResult()
    for item in items:
        if isinstance(item.outcome, SmsRecord):
            result.new.append(item.outcome)
        elif isinstance(item.outcome, Rejected):
            result.rejected += 1
        else:
            result.skipped += 1
    return result
