"""``inbound-mail status``: is the feed healthy?  Read from the database alone.

The daemon's heartbeat job writes to the store's ``state`` table every few
seconds: ``heartbeat`` (epoch seconds), ``daemon`` (pid, start time, version,
the storage failure it meets if any, and ``stopped_at`` once it has stopped
cleanly) and ``account:NAME`` (the worker's connection state, last successful
sync, last error).

A database on a full disk cannot take even that small write, so the heartbeat
also goes to a sidecar file, ``DATABASE-heartbeat`` (:class:`HeartbeatFile`):
4 KiB allocated when the daemon starts, then overwritten in place, which needs
no new block.  ``status`` takes whichever of the two is newer, so a storage
failure is CRITICAL with its cause at once, and a clean stop is "stopped at T"
at once, instead of a heartbeat that looks fine until it grows stale.

:func:`collect_status` reads those, when the SMS to each destination number was
last stored, and the delivery statistics of the last hour, and judges them against
``[status]``; the thresholds default to the provider's own advice (deliveries
slower than 5 s or failing more than 1 % of the time deserve an alert, and so
do gaps in expected traffic).

The report's level follows the Nagios convention: OK (exit 0), WARNING (1),
CRITICAL (2), and UNKNOWN (3) when the config or the database cannot be read
(a missing database included: ``status`` opens it read-only and never creates
it).  Each problem is one line that says what to fix.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from .. import __version__
from ..config.model import AccountConfig, Config
from ..errors import StoreError
from ..sources.imap.worker import SETTLING_STATES
from ..store.db import Store
from ..store.rows import epoch_of

if TYPE_CHECKING:
    from ..sources.imap.worker import AccountHealth, AccountState

__all__ = [
    "ACCOUNT_PREFIX",
    "DAEMON_KEY",
    "HEARTBEAT_KEY",
    "HeartbeatFile",
    "Problem",
    "StatusReport",
    "account_state",
    "collect_status",
    "daemon_state",
    "heartbeat_file_path",
    "read_heartbeat_file",
    "unknown_status",
]

Severity = Literal["OK", "WARNING", "CRITICAL", "UNKNOWN"]
EXIT_CODES: dict[str, int] = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}
HEARTBEAT_KEY = "heartbeat"
DAEMON_KEY = "daemon"
ACCOUNT_PREFIX = "account:"
HOUR = 3600.0
_SUFFIX = "-heartbeat"
DAY = 86400.0
JOURNAL_HINT = "see `systemctl status inbound-mail` and `journalctl -u inbound-mail`"


class HeartbeatFile:
    """The daemon's side of ``DATABASE-heartbeat``: one JSON object padded to SIZE bytes,
    rewritten in place.  Best effort: a file that cannot be written is logged once by
    the caller and the database's heartbeat carries on alone."""

    SIZE = 4096

    def __init__(self, db_path: Path) -> None:
        self.path = heartbeat_file_path(db_path)
        self._fd: int | None = None

    def open(self) -> None:
        """Create (mode of the database file: whoever may read one may read the other)
        and allocate the file; raises OSError."""
        mode = 0o600
        with suppress(OSError):
            mode = os.stat(self.path.with_name(self.path.name.removesuffix(_SUFFIX))).st_mode
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode & 0o666)
        try:
            if os.fstat(fd).st_size < self.SIZE:
                os.pwrite(fd, b" " * self.SIZE, 0)  # the blocks every later write reuses
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def write(self, data: dict[str, Any]) -> None:
        """Overwrite the record; raises OSError.  Long values are cut to fit."""
        if self._fd is None:
            return
        if len(str(data.get("storage_error") or "")) > 500:  # fits SIZE even if JSON-escaped
            data = {**data, "storage_error": str(data["storage_error"])[:500] + "..."}
        payload = json.dumps(data).encode()
        os.pwrite(self._fd, payload.ljust(self.SIZE)[: self.SIZE], 0)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def heartbeat_file_path(db_path: Path) -> Path:
    """``DATABASE-heartbeat``, beside the database like SQLite's ``-wal`` and ``-shm``."""
    return db_path.with_name(db_path.name + _SUFFIX)


def read_heartbeat_file(db_path: Path) -> dict[str, Any]:
    """What the daemon last wrote to its heartbeat file; {} if none can be read."""
    try:
        with heartbeat_file_path(db_path).open("rb") as handle:
            text = handle.read(HeartbeatFile.SIZE)
    except OSError:
        return {}
    return _json(text.decode("utf-8", "replace").strip())


def account_state(health: AccountHealth, *, stalled: bool) -> str:
    """The ``account:NAME`` value the daemon's heartbeat writes (JSON)."""
    return json.dumps(
        {
            "state": health.state,
            "connected": health.connected,
            "last_sync_at": health.last_sync_at,
            "last_error": health.last_error,
            "reconnects": health.reconnects,
            "idle_refreshes": health.idle_refreshes,
            "acks_owed": health.acks_owed,
            "ack_error": health.ack_error,
            "stalled": stalled,
        }
    )


def daemon_state(
    pid: int,
    started_at: float,
    accounts: list[str],
    *,
    storage_error: str | None = None,
    stopped_at: float | None = None,
) -> dict[str, Any]:
    """The ``daemon`` value the heartbeat writes (as JSON): ``accounts`` are those it
    serves, ``storage_error`` the database failure it meets now, ``stopped_at`` the
    time of a clean stop."""
    return {
        "pid": pid,
        "started_at": started_at,
        "version": __version__,
        "accounts": accounts,
        "storage_error": storage_error,
        "stopped_at": stopped_at,
    }


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing to fix."""

    level: Severity
    subject: str
    message: str

    def line(self) -> str:
        return f"{self.level} {self.subject}: {self.message}"


@dataclass(slots=True)
class StatusReport:
    """What ``status`` found; ``exit_code`` follows the Nagios convention."""

    checked_at: float
    database: str
    daemon: dict[str, Any] = field(default_factory=dict)
    accounts: list[dict[str, Any]] = field(default_factory=list)
    numbers: list[dict[str, Any]] = field(default_factory=list)
    sinks: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def level(self) -> Severity:
        levels = {p.level for p in self.problems}
        for level in ("UNKNOWN", "CRITICAL", "WARNING"):
            if level in levels:
                return level
        return "OK"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.level]

    def problem(self, level: Severity, subject: str, message: str) -> None:
        self.problems.append(Problem(level, subject, message))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"], data["exit_code"] = self.level, self.exit_code
        return data

    def lines(self) -> list[str]:
        """The text report: a summary line, one line per problem, then the figures."""
        count = len(self.problems)
        summary = f"{count} problem{'s' if count != 1 else ''}" if count else self._totals()
        lines = [f"{self.level}: {summary}"] + [p.line() for p in self.problems]
        if self.level == "UNKNOWN":
            return lines  # nothing was read: no figures to show
        lines.append("")
        lines.append(_daemon_line(self.daemon, self.checked_at))
        lines += [_account_line(a, self.checked_at) for a in self.accounts]
        lines += [_number_line(n, self.checked_at) for n in self.numbers]
        lines += [_sink_line(s) for s in self.sinks]
        return lines

    def _totals(self) -> str:
        return (
            f"{len(self.accounts)} accounts, {len(self.numbers)} numbers, {len(self.sinks)} sinks"
        )


def unknown_status(subject: str, message: str, *, database: str = "") -> StatusReport:
    """The UNKNOWN (exit 3) report of a check that could not run: no config, no database."""
    report = StatusReport(checked_at=time.time(), database=database)
    report.problem("UNKNOWN", subject, message)
    return report


def collect_status(config: Config, *, now: float | None = None) -> StatusReport:
    """Read the database named by ``config`` and judge it against ``config.status``.

    A database that cannot be read (missing, unreadable, not ours) gives an
    UNKNOWN report: the health of the feed cannot be judged without it."""
    now = time.time() if now is None else now
    path = config.database.path
    report = StatusReport(checked_at=now, database=str(path))
    try:
        _collect(report, config, now)
    except StoreError as exc:
        return unknown_status("database", f"{exc}", database=str(path))
    return report


def _collect(report: StatusReport, config: Config, now: float) -> None:
    with Store.open_readonly(config.database.path) as store:
        state = store.state_items()
        # Read after the database: a daemon that started meanwhile has written both.
        beacon = read_heartbeat_file(config.database.path)
        fresh = _judge_heartbeat(report, config, state, beacon, now)
        for account in config.accounts:
            _judge_account(report, account, state, now, judge=fresh)
        _judge_numbers(report, config, store.last_stored_by_destination(), now)
        _judge_trust(report, config, store.trust_counts(now - DAY))
        backlog = store.backlog()
        for sink in config.sinks:
            stats = store.delivery_stats(sink.name, now - HOUR)
            _judge_sink(report, config, sink.name, backlog.get(sink.name, {}), stats)


# -- the judges ------------------------------------------------------------------------------
def _judge_trust(report: StatusReport, config: Config, counts: dict[str, int]) -> None:
    """Mail that claims to be the provider without proof: accepted (``report``) or
    rejected (``require``; real mail rejected there is SMS the operator never gets)."""
    reporting = [a.name for a in config.accounts if a.authenticate == "report"]
    if config.parse.authenticate == "report" and not config.accounts:
        reporting.append("[parse]")
    if reporting or counts["unauthenticated_sms"]:
        report.problem(
            "WARNING",
            "trust",
            f"{counts['unauthenticated_sms']} SMS not authenticated in the last 24 h were "
            f'stored and delivered (authenticate = "report": {", ".join(reporting) or "earlier"}'
            "); anyone can forge those: check `inbound-mail check`, then set "
            'authenticate = "require"',
        )
    if counts["unauthenticated_rejects"]:
        report.problem(
            "WARNING",
            "trust",
            f"{counts['unauthenticated_rejects']} emails claiming to be the provider were "
            "rejected as unauthenticated in the last 24 h: look at `inbound-mail rejects`; "
            "if they are real, fix authserv_ids / DNS (`inbound-mail check`) and "
            "`inbound-mail rejects --release ID`",
        )


def _judge_heartbeat(
    report: StatusReport,
    config: Config,
    state: dict[str, str],
    beacon: dict[str, Any],
    now: float,
) -> bool:
    """Record the daemon's figures; True when its heartbeat is fresh and it serves."""
    report.daemon = _json(state.get(DAEMON_KEY))
    beat = _float(state.get(HEARTBEAT_KEY))
    beacon_beat = _float(beacon.get("heartbeat_at"))
    if beacon_beat is not None and (beat is None or beacon_beat >= beat):
        # The database missed the latest beats (a full disk, say): the file has them.
        beat = beacon_beat
        for key in ("pid", "started_at", "storage_error", "stopped_at"):
            report.daemon[key] = beacon.get(key)
    report.daemon["heartbeat_at"] = beat
    limit = config.status.heartbeat_stale
    stopped = _float(report.daemon.get("stopped_at"))
    if stopped is not None:
        report.problem(
            "CRITICAL",
            "daemon",
            f"daemon stopped at {_iso(stopped)} ({_ago(now - stopped)} ago, pid "
            f"{report.daemon.get('pid', '?')}): start it (systemctl start inbound-mail); "
            f"{JOURNAL_HINT}",
        )
        return False
    storage = report.daemon.get("storage_error")
    if storage and beat is not None and now - beat <= limit:
        report.problem(
            "CRITICAL",
            "database",
            f"the daemon cannot write to its database: {storage}. New mail waits in the "
            "mailbox, unacknowledged, and is stored once this is fixed",
        )
        return False  # the accounts' rows in the database are as old as its last write
    if beat is None:
        report.problem(
            "CRITICAL",
            "daemon",
            f"no heartbeat in {report.database}: the daemon has "
            f"never run on this database; start it ({JOURNAL_HINT})",
        )
        return False
    if now - beat > limit:
        report.problem(
            "CRITICAL",
            "daemon",
            f"last heartbeat {_ago(now - beat)} ago (limit "
            f"{_ago(limit)}): the daemon is stopped or hung; {JOURNAL_HINT}",
        )
        return False
    return True


def _judge_account(
    report: StatusReport, account: AccountConfig, state: dict[str, str], now: float, *, judge: bool
) -> None:
    data = _json(state.get(ACCOUNT_PREFIX + account.name))
    report.accounts.append({"name": account.name, **data})
    subject = f"account {account.name}"
    if not judge:
        return  # a stale heartbeat is the one problem to report; these figures are as old
    if not data or account.name not in report.daemon.get("accounts", [account.name]):
        report.problem(
            "WARNING",
            subject,
            "not served by the running daemon, which started before "
            "the account was added: reload it (systemctl reload inbound-mail)",
        )
        return
    # The heartbeat's JSON holds the worker's AccountState: typed, a misspelt state
    # below is a mypy error rather than a check that never matches.
    worker_state = cast("AccountState | None", data.get("state"))
    if data.get("stalled"):
        report.problem(
            "CRITICAL",
            subject,
            "its worker shows no sign of life; restart the service "
            f"(systemctl restart inbound-mail) and report the hang ({JOURNAL_HINT})",
        )
    elif worker_state == "authorization_expired":
        # The OAuth2 grant is gone: no retry can fix it, a person must sign in again.
        report.problem(
            "CRITICAL",
            subject,
            f"authorization expired: run `inbound-mail auth {account.name}`, then reload "
            "the daemon (systemctl reload inbound-mail)",
        )
        return
    elif not data.get("connected") and worker_state == "backoff":
        report.problem("WARNING", subject, f"disconnected, retrying: {data.get('last_error')}")
    if data.get("ack_error"):
        # New mail still flows; the mailbox keeps what `after` should have moved/marked.
        report.problem(
            "WARNING",
            subject,
            f"acknowledgements owed: {data.get('acks_owed', 0)} ({data['ack_error']}); "
            f"retried with backoff: fix the server or {account.key('after')}",
        )
    limit = _sync_limit(account)
    last_sync = _float(data.get("last_sync_at"))
    if last_sync is None and worker_state not in (*SETTLING_STATES, "connected"):
        report.problem(
            "CRITICAL",
            subject,
            f"has never completed a sync pass: fix the error above ({JOURNAL_HINT})",
        )
    elif last_sync is not None and now - last_sync > limit:
        report.problem(
            "CRITICAL",
            subject,
            f"no successful sync for {_ago(now - last_sync)} "
            f"(limit {_ago(limit)}): no SMS arrives from it; {JOURNAL_HINT}",
        )


def _judge_numbers(report: StatusReport, config: Config, last: dict[str, str], now: float) -> None:
    """``last`` maps each number to when its latest SMS was STORED: the date in an
    email's body is the sender's word and may lie (a year 9999 would silence the check)."""
    expected = config.status.expect_within
    for number in sorted(set(last) | set(expected)):
        stored = last.get(number)
        age = now - epoch_of(stored) if stored else None
        report.numbers.append(
            {"destination": number, "last_stored_at": stored, "expect_within": expected.get(number)}
        )
        window = expected.get(number)
        if window is None or (age is not None and age <= window):
            continue
        seen = f"no SMS stored for {_ago(age)}" if age is not None else "no SMS stored yet"
        report.problem(
            "WARNING",
            f"number {number}",
            f"{seen} (expected within {_ago(window)}): "
            "check that the provider still delivers this number by email to the "
            "mailbox, and that the mail is not filtered as spam",
        )


def _judge_sink(
    report: StatusReport, config: Config, name: str, backlog: dict[str, int], stats: dict[str, Any]
) -> None:
    limits = config.status
    attempts, failures = int(stats["attempts"]), int(stats["failures"])
    rate = failures / attempts if attempts else 0.0
    p95 = stats["p95_duration"]
    report.sinks.append(
        {
            "name": name,
            "pending": backlog.get("pending", 0),
            "failed": backlog.get("failed", 0),
            "dead": backlog.get("dead", 0),
            "attempts_last_hour": attempts,
            "error_rate": rate,
            "p95_seconds": p95,
        }
    )
    subject = f"sink {name}"
    if backlog.get("dead"):
        report.problem(
            "WARNING",
            subject,
            f"{backlog['dead']} dead deliveries: see `inbound-mail "
            f"deliveries --status dead --sink {name}`, fix the receiver, then "
            f"`inbound-mail retry-dead --sink {name}`",
        )
    if attempts and rate > limits.error_rate:
        report.problem(
            "WARNING",
            subject,
            f"{rate:.1%} of {attempts} attempts failed in the last hour "
            f"(limit {limits.error_rate:.1%}): see `inbound-mail deliveries --status failed "
            f"--sink {name}` for the receiver's errors",
        )
    if p95 is not None and p95 > limits.slow_delivery:
        report.problem(
            "WARNING",
            subject,
            f"p95 delivery time {p95:.2f}s in the last hour (limit "
            f"{limits.slow_delivery:g}s): the receiver should answer at once and do "
            "its work in the background",
        )


def _sync_limit(account: AccountConfig) -> float:
    """How old the last sync may be: with IDLE a pass follows every refresh and resync."""
    every = (
        min(account.idle_refresh, account.resync_interval)
        if account.idle
        else account.poll_interval
    )
    return 2 * max(every, account.poll_interval) + 60.0


# -- formatting --------------------------------------------------------------------------
def _daemon_line(daemon: dict[str, Any], now: float) -> str:
    beat = daemon.get("heartbeat_at")
    if beat is None:
        return "daemon: no heartbeat"
    pid, version = daemon.get("pid", "?"), daemon.get("version", "?")
    stopped = _float(daemon.get("stopped_at"))
    if stopped is not None:
        return f"daemon: stopped at {_iso(stopped)}, pid {pid}, version {version}"
    return f"daemon: heartbeat {_ago(now - beat)} ago, pid {pid}, version {version}"


def _account_line(account: dict[str, Any], now: float) -> str:
    if "state" not in account:
        return f"account {account['name']}: no state reported"
    sync = account.get("last_sync_at")
    synced = f"last sync {_ago(now - sync)} ago" if sync else "never synced"
    reconnects = account.get("reconnects", 0)
    return f"account {account['name']}: {account['state']}, {synced}, {reconnects} reconnects"


def _number_line(number: dict[str, Any], now: float) -> str:
    stored = number["last_stored_at"]
    last = (
        f"last SMS stored {stored} ({_ago(now - epoch_of(stored))} ago)" if stored else "no SMS yet"
    )
    return f"number {number['destination']}: {last}"


def _sink_line(sink: dict[str, Any]) -> str:
    p95 = sink["p95_seconds"]
    return (
        f"sink {sink['name']}: backlog {sink['pending']}, dead {sink['dead']}, last hour "
        f"{sink['attempts_last_hour']} attempts, {sink['error_rate']:.1%} errors, "
        f"p95 {'-' if p95 is None else f'{p95:.2f}s'}"
    )


def _ago(seconds: float) -> str:
    """``42s``, ``5m``, ``3h 2m``, ``2d 3h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _json(value: str | None) -> dict[str, Any]:
    try:
        data = json.loads(value) if value else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _float(value: object) -> float | None:
    try:
        return None if value is None else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
