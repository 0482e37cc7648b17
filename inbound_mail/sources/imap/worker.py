"""The per-account worker: connect, catch up, then IDLE (or poll) until told to stop.

One worker runs in its own thread per account, so one account's failure never
stalls another.  Every (re)connect starts with a catch-up pass over every
folder, so mail that arrived while disconnected is never missed.  Failures of
any kind end the session and are retried with exponential backoff and jitter,
capped at five minutes; the worker itself never dies.

A silently dead connection is found by the IDLE deadline: after
``idle_deadline`` seconds without a word from the server the worker ends IDLE
with DONE, which must be answered within the socket's read timeout, re-SELECTs
and searches; a dead socket fails there and the worker reconnects.  TCP
keepalive on the socket is a second line of defence.

Mail that reaches the folder while a pass runs is announced in reply to the
pass's own commands, not in IDLE: when a pass says so (``SyncResult.arrived``)
the worker passes again before it re-enters IDLE, so a burst of SMS never
waits for a later event.  Mail that comes after the pass's last command is
caught by a NOOP right before IDLE.  Dovecot's IDLE tells only of changes made
after it started, so mail committed between that NOOP and the start of IDLE
would wait for the next change: after a pass that found mail, the worker ends
its IDLE once, :data:`CONFIRM_AFTER` seconds in (DONE is answered with what
changed), and goes back to IDLE.  Two commands after each burst, none on the
way of an SMS.

An ``after`` action the server refuses leaves its acks owed (shown in
:class:`AccountHealth`) and is retried when its backoff is over: the worker
wakes from IDLE for it.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from imapclient import IMAPClient

from ...config.model import AccountConfig, ParseOptions
from ...errors import (
    AuthorizationExpiredError,
    ImapAuthError,
    ImapConnectionError,
    ImapError,
    InboundMailError,
    OAuthError,
    StoreError,
)
from ...faults import fault_stall
from ...logs import log_event
from ...oauth import TokenSource
from ...parse.authenticity import Verifier
from ...secrets import read_password
from ...store.db import Store
from ...store.rows import IngestResult, Router
from ..pool import ParsePool
from .acks import ACK_RETRY_BASE, AckRetries
from .connection import connect, imap_errors
from .oauth import connect_oauth
from .sync import FetchFailures, FolderSync, SyncOptions, SyncResult

__all__ = [
    "RESTING_STATES",
    "SETTLING_STATES",
    "AccountHealth",
    "AccountState",
    "AccountWorker",
    "IdleOutcome",
    "reconnect_delay",
]

_log = logging.getLogger("inbound_mail.imap")
BACKOFF_CAP = 300.0
CONFIRM_AFTER = 0.5
AccountState = Literal[
    "starting",
    "connecting",
    "connected",
    "idle",
    "polling",
    "backoff",
    "stopped",
    "authorization_expired",
]
"""A worker's state; ``authorization_expired``: the OAuth2 grant was revoked or has
expired, and only ``inbound-mail auth NAME`` (then a reload) brings the account back."""
SETTLING_STATES: frozenset[AccountState] = frozenset({"starting", "connecting"})
"""Not yet connected, nor failed: readiness waits for an account to leave these."""
RESTING_STATES: frozenset[AccountState] = frozenset({"backoff", "stopped", "authorization_expired"})
"""Waiting on the stop event, or done: nothing there can hang (no stall detection)."""
IdleOutcome = Literal["news", "confirm", "resync", "acks", "refresh", "probe", "stop"]
"""Why one IDLE ended: mail arrived (``news``), the confirmation window passed, a
resync or a refused acknowledgement is due, the refresh interval passed, the server
was silent past the deadline (``probe``), or the worker is stopping."""
IdleWait = Literal["news", "heard", "quiet", "probe"]
"""One wait inside IDLE: mail, another untagged response, nothing, or EOF."""
AUTH_EXPIRED_RETRY = 3600.0
"""Seconds between tries while the OAuth2 grant is refused: a person must act, so no
tight loop; a reload after ``inbound-mail auth`` retries at once."""


def reconnect_delay(attempt: int, *, base: float = 1.0, cap: float = BACKOFF_CAP) -> float:
    """Exponential backoff with jitter: ``base * 2**attempt`` capped, times 0.5-1."""
    return float(min(cap, base * 2.0 ** min(attempt, 30)) * random.uniform(0.5, 1.0))  # noqa: S311


@dataclass(slots=True)
class AccountHealth:
    """What the service, the watchdog and ``status`` know of one worker."""

    state: AccountState = "starting"
    connected: bool = False
    last_sync_at: float | None = None
    last_error: str | None = None
    storage_error: str | None = None
    """The database failure that ended the last session (disk full, ...), until a pass
    succeeds: the daemon reports it to ``status`` as CRITICAL at once."""
    reconnects: int = 0
    idle_refreshes: int = 0
    acks_owed: int = 0
    """Acknowledgements owed because the server refused the ``after`` action."""
    ack_error: str | None = None
    """Why: the folder, the action and the server's answer."""
    ack_failures: int = 0
    """Refused acknowledgement attempts since start (a counter)."""
    last_tick: float = field(default_factory=time.monotonic)

    def tick(self) -> None:
        self.last_tick = time.monotonic()


class AccountWorker:
    """Keeps one account's folders flowing into the store."""

    def __init__(
        self,
        account: AccountConfig,
        *,
        db_path: Path,
        parse_options: ParseOptions,
        stop: threading.Event,
        route: Router | None = None,
        on_batch: Callable[[AccountConfig, str, IngestResult], None] | None = None,
        verifier: Verifier | None = None,
        pool: ParsePool | None = None,
    ) -> None:
        self.account = account
        self.verifier = verifier
        self.pool = pool  # backfill's parse processes; the daemon parses inline
        self.db_path = db_path
        self.parse_options = parse_options
        self.stop = stop
        self.route = route
        self.on_batch = on_batch
        self.health = AccountHealth()
        self.sync_requested = threading.Event()
        self.fetch_failures = FetchFailures()
        self.ack_retries = AckRetries(lambda attempt: reconnect_delay(attempt, base=ACK_RETRY_BASE))
        self._attempt = 0
        self._tokens: TokenSource | None = None

    def request_sync(self) -> None:
        """Ask for a full pass at the next opportunity (APScheduler's resync job)."""
        self.sync_requested.set()

    def poll_due(self) -> None:
        """APScheduler's poll job: a pass, but only while polling (IDLE needs none)."""
        if self.health.state == "polling":
            self.sync_requested.set()

    # -- burst mode --------------------------------------------------------
    def run_once(self, options: SyncOptions | None = None) -> list[SyncResult]:
        """Connect, run one pass over every folder, log out.  Raises ImapError."""
        options = options or SyncOptions()
        with self._session() as (_client, syncer), imap_errors(self.account):
            return [syncer.sync(folder, options) for folder in self.account.folders]

    # -- daemon mode ---------------------------------------------------------
    def run(self) -> None:
        """The thread's body: sessions until ``stop`` is set, backoff between them."""
        while not self.stop.is_set():
            try:
                with self._session() as (client, syncer), imap_errors(self.account):
                    self._serve(client, syncer)
            except Exception as exc:  # the worker must outlive every failure
                self._failed(exc)
            finally:
                self.health.connected = False
        self._set_state("stopped")

    def _failed(self, exc: Exception) -> None:
        if self.stop.is_set():
            return
        if isinstance(exc, AuthorizationExpiredError):
            self._authorization_expired(exc)
            return
        gentle = isinstance(exc, ImapAuthError | OAuthError)  # a server that said no, or failed
        delay = reconnect_delay(self._attempt, base=5.0 if gentle else 1.0)
        self._attempt += 1
        self.health.reconnects += 1
        # `status` and the log line name the account already: not twice.
        named = isinstance(exc, ImapError | OAuthError) and exc.account == self.account.name
        self.health.last_error = (
            exc.reason if isinstance(exc, ImapError | OAuthError) and named else str(exc)
        )
        if isinstance(exc, StoreError):
            self.health.storage_error = str(exc)
        level = logging.ERROR if isinstance(exc, InboundMailError) else logging.CRITICAL
        log_event(
            _log,
            level,
            "imap.disconnected",
            account=self.account.name,
            error=self.health.last_error,
            error_type=type(exc).__name__,
            retry_in=f"{delay:.1f}s",
            **(
                {}
                if isinstance(exc, InboundMailError)
                else {"bug": "unexpected error, please report"}
            ),
        )
        self._set_state("backoff")
        self.stop.wait(delay)

    def _authorization_expired(self, exc: AuthorizationExpiredError) -> None:
        self.health.reconnects += 1
        self.health.last_error = exc.reason  # it says to run `inbound-mail auth NAME`
        log_event(
            _log,
            logging.ERROR,
            "imap.authorization_expired",
            account=self.account.name,
            error=exc.reason,
            action=f"run `inbound-mail auth {self.account.name}`, then reload the daemon",
            retry_in=f"{AUTH_EXPIRED_RETRY:.0f}s",
        )
        self._set_state("authorization_expired")
        self.stop.wait(AUTH_EXPIRED_RETRY)

    def _connect(self) -> IMAPClient:
        if self.account.auth == "oauth2":
            if self._tokens is None:
                self._tokens = TokenSource(self.account, self.db_path)
            return connect_oauth(self.account, self._tokens, log=_log)
        return connect(self.account, read_password(self.account), log=_log)

    def _session(self) -> AbstractContextManager[tuple[IMAPClient, FolderSync]]:
        return self.connected_syncer(on_batch=self._batch_stored)

    @contextmanager
    def connected_syncer(
        self,
        *,
        on_batch: Callable[[str, IngestResult], None] | None = None,
        on_found: Callable[[str, int], None] | None = None,
    ) -> Iterator[tuple[IMAPClient, FolderSync]]:
        """A logged-in client and a FolderSync over it; logs out on exit."""
        self._set_state("connecting")
        client = self._connect()
        try:
            with Store.open(self.db_path) as store:
                syncer = FolderSync(
                    client,
                    self.account,
                    store,
                    self.parse_options,
                    route=self.route,
                    on_batch=on_batch,
                    on_found=on_found,
                    should_stop=self.stop.is_set,
                    fetch_failures=self.fetch_failures,
                    on_parsed=self.health.tick,  # progress is per email, not per batch
                    verifier=self.verifier,
                    ack_retries=self.ack_retries,
                    pool=self.pool,
                )
                self.health.connected = True
                self._set_state("connected")
                yield client, syncer
        finally:
            _logout(client)

    def _serve(self, client: IMAPClient, syncer: FolderSync) -> None:
        use_idle = self.account.idle and client.has_capability("IDLE")
        if self.account.idle and not use_idle:
            log_event(
                _log,
                logging.WARNING,
                "imap.no_idle",
                account=self.account.name,
                action=f"polling every {self.account.poll_interval:g}s",
            )
        self._sync_all(syncer)
        self._attempt = 0  # connected and caught up: the next failure starts backoff afresh
        confirm = False
        while not self.stop.is_set():
            if use_idle:
                reason = self._idle(client, confirm=confirm)
                confirm = reason == "news"  # mail may come during the pass's tail
                if reason == "news":
                    self._sync(syncer, self.account.folders[0])
                    continue
                if reason == "confirm":
                    continue  # nothing came before IDLE started: IDLE again
                if reason == "acks":
                    self._sync_all(syncer, clear_request=False)
                    continue
            else:
                self._set_state("polling")
                while not self.stop.is_set() and not self.sync_requested.wait(1.0):
                    self.health.tick()
            if not self.stop.is_set():
                self._sync_all(syncer)

    def _sync_all(self, syncer: FolderSync, *, clear_request: bool = True) -> None:
        if clear_request:
            self.sync_requested.clear()
        # The IDLE folder goes last, so it is the one left selected.
        for folder in reversed(self.account.folders):
            self._sync(syncer, folder)

    def _sync(self, syncer: FolderSync, folder: str) -> None:
        """Pass over ``folder`` until no mail arrived during the last pass."""
        while True:
            result = syncer.sync(folder)
            # A whole pass stored: what a storage failure left unstored (still beyond the
            # checkpoint, still unacknowledged) has been stored by now.
            self.health.storage_error = None
            self.health.last_sync_at = time.time()
            self._show_acks()
            self.health.tick()
            if not result.arrived or self.stop.is_set():
                return

    def _show_acks(self) -> None:
        """Copy the refused acknowledgements into the health that status and metrics read."""
        failing = self.ack_retries.failing
        self.health.ack_failures = self.ack_retries.failures_total
        self.health.acks_owed = sum(failure.owed for failure in failing)
        self.health.ack_error = (
            "; ".join(
                f"{failure.folder}: {failure.action} refused ({failure.answer})"
                for failure in failing
            )
            or None
        )

    def _idle(self, client: IMAPClient, *, confirm: bool = False) -> IdleOutcome:
        """IDLE until news, a refresh, a resync request, silence past the deadline, or stop;
        with ``confirm``, end it :data:`CONFIRM_AFTER` seconds in, to hear of mail that
        came just before IDLE started."""
        self._set_state("idle")
        if _news(client.noop()[1]):  # mail since the last command: IDLE would not tell
            return "news"
        client.idle()
        started = heard = time.monotonic()
        confirm_at = started + CONFIRM_AFTER if confirm else None
        reason: IdleOutcome = "stop"
        while not self.stop.is_set():
            now = time.monotonic()
            if confirm_at is not None and now >= confirm_at:
                reason = "confirm"
            elif self.sync_requested.is_set():
                reason = "resync"
            elif self.ack_retries.any_due():
                reason = "acks"  # a refused `after` is due for another try
            elif now - started >= self.account.idle_refresh:
                reason = "refresh"
                self.health.idle_refreshes += 1
            elif now - heard >= self.account.idle_deadline:
                reason = "probe"  # DONE below must be answered, or the connection is dead
            else:
                wait = 1.0 if confirm_at is None else max(0.01, min(1.0, confirm_at - now))
                waited = self._idle_wait(client, wait)
                if waited == "heard":
                    heard = time.monotonic()
                    continue
                if waited == "quiet":
                    continue
                reason = waited
            break
        _text, responses = client.idle_done()
        if reason != "stop" and _news(responses):
            return "news"  # DONE is answered with what changed, IDLE's blind spot included
        return reason

    def _idle_wait(self, client: IMAPClient, timeout: float) -> IdleWait:
        fault_stall("stall-idle")
        waited_from = time.monotonic()
        responses = client.idle_check(timeout=timeout)
        self.health.tick()
        if not responses:
            # A readable socket with nothing parsed is EOF: probe at once.
            return "quiet" if time.monotonic() - waited_from >= timeout / 2 else "probe"
        for response in responses:
            if len(response) >= 2 and response[0] == b"BYE":
                raise ImapConnectionError(
                    f"server said BYE: {response[1]!r}", account=self.account.name
                )
        return "news" if _news(responses) else "heard"

    def _batch_stored(self, folder: str, result: IngestResult) -> None:
        self.health.tick()  # a long catch-up pass is progress too, for the watchdog
        for record, status in [(r, "new") for r in result.new] + [
            (r, "duplicate") for r in result.duplicates
        ]:
            log_event(
                _log,
                logging.INFO,
                "sms.stored",
                account=self.account.name,
                folder=folder,
                originator=record.originator,
                destination=record.destination,
                date_time=record.date_time,
                id=record.id[:16],
                status=status,
            )
        if result.rejected:
            log_event(
                _log,
                logging.WARNING,
                "sms.rejected",
                account=self.account.name,
                folder=folder,
                count=result.rejected,
                hint="see `inbound-mail rejects`",
            )
        if self.on_batch:
            self.on_batch(self.account, folder, result)

    def _set_state(self, state: AccountState) -> None:
        if state != self.health.state:
            log_event(_log, logging.INFO, "imap.state", account=self.account.name, state=state)
        self.health.state = state
        self.health.tick()


def _news(responses: list[Any]) -> bool:
    """Any ``* N EXISTS`` or ``* N RECENT`` among parsed untagged responses."""
    return any(len(r) >= 2 and r[1] in (b"EXISTS", b"RECENT") for r in responses)


def _logout(client: IMAPClient) -> None:
    """Log out politely, but never let a dead connection's error escape."""
    try:
        client.logout()
    except Exception:
        with contextlib.suppress(Exception):  # the socket is already gone
            client.shutdown()
