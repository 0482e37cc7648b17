"""Opening the SQLite database: file creation, pragmas, forward migrations, error translation.

The schema version is ``PRAGMA user_version``: the number of entries of
:data:`MIGRATIONS` applied.  Each migration runs in its own ``BEGIN IMMEDIATE``
transaction together with the version bump, so a crash mid-migration leaves the
previous version intact and two processes opening a fresh file do not both
migrate it.  Column names are user-facing (people query the file with
sqlite-utils and Datasette): rename nothing without a migration.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import StoreError
from ..models import reject_code_for

__all__ = [
    "APPLICATION_ID",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "check_private_file",
    "connect",
    "connect_readonly",
    "rollback",
    "translate_error",
]

_log = logging.getLogger("inbound_mail._schema")  # a log field: kept across the move

# "IMSM" in ASCII: marks the file as ours, so that a mistyped path pointing at
# some other application's database is refused instead of being migrated.
APPLICATION_ID = 0x494D534D

_V1 = [
    """CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        originator TEXT NOT NULL,
        destination TEXT NOT NULL,
        date_time TEXT NOT NULL,
        received_at TEXT NOT NULL,
        text TEXT NOT NULL,
        keyword TEXT,
        message_id TEXT,
        email_date TEXT,
        subject TEXT,
        sender TEXT,
        stored_at TEXT NOT NULL
    )""",
    "CREATE INDEX messages_received_at ON messages (received_at, stored_at)",
    "CREATE INDEX messages_destination ON messages (destination, received_at)",
    "CREATE INDEX messages_originator ON messages (originator, received_at)",
    """CREATE TABLE emails (
        id INTEGER PRIMARY KEY,
        sms_id TEXT NOT NULL REFERENCES messages (id),
        message_id TEXT,
        kind TEXT NOT NULL,
        account TEXT,
        folder TEXT,
        uidvalidity INTEGER,
        uid INTEGER,
        path TEXT,
        key TEXT,
        seen_at TEXT NOT NULL,
        duplicate INTEGER NOT NULL CHECK (duplicate IN (0, 1))
    )""",
    "CREATE INDEX emails_sms_id ON emails (sms_id)",
    # One row per source email however often it is read again: an IMAP message
    # is (account, folder, uidvalidity, uid); a local one is (kind, path, key).
    """CREATE UNIQUE INDEX emails_imap ON emails (account, folder, uidvalidity, uid)
        WHERE uid IS NOT NULL""",
    """CREATE UNIQUE INDEX emails_local ON emails (kind, path, ifnull(key, ''))
        WHERE path IS NOT NULL""",
    """CREATE TABLE raw_emails (
        email_id INTEGER PRIMARY KEY REFERENCES emails (id) ON DELETE CASCADE,
        raw BLOB NOT NULL,
        stored_at TEXT NOT NULL
    )""",
    "CREATE INDEX raw_emails_stored_at ON raw_emails (stored_at)",
    """CREATE TABLE rejects (
        id INTEGER PRIMARY KEY,
        reason TEXT NOT NULL,
        raw BLOB NOT NULL,
        rejected_at TEXT NOT NULL,
        origin TEXT NOT NULL,
        kind TEXT NOT NULL,
        account TEXT,
        folder TEXT,
        uidvalidity INTEGER,
        uid INTEGER,
        path TEXT,
        key TEXT,
        message_id TEXT,
        sender TEXT,
        subject TEXT
    )""",
    """CREATE UNIQUE INDEX rejects_imap ON rejects (account, folder, uidvalidity, uid)
        WHERE uid IS NOT NULL""",
    """CREATE UNIQUE INDEX rejects_local ON rejects (kind, path, ifnull(key, ''))
        WHERE path IS NOT NULL""",
    """CREATE TABLE checkpoints (
        account TEXT NOT NULL,
        folder TEXT NOT NULL,
        uidvalidity INTEGER NOT NULL,
        last_uid INTEGER NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (account, folder)
    )""",
    """CREATE TABLE pending_acks (
        account TEXT NOT NULL,
        folder TEXT NOT NULL,
        uidvalidity INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        action TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (account, folder, uidvalidity, uid)
    )""",
    """CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        sms_id TEXT NOT NULL REFERENCES messages (id),
        sink TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        next_attempt_at REAL NOT NULL,
        last_error TEXT,
        delivered_at REAL,
        UNIQUE (sms_id, sink)
    )""",
    "CREATE INDEX deliveries_queue ON deliveries (sink, status, id)",
    "CREATE INDEX deliveries_delivered_at ON deliveries (sink, delivered_at)",
    """CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        delivery_id INTEGER NOT NULL REFERENCES deliveries (id),
        sink TEXT NOT NULL,
        started_at REAL NOT NULL,
        duration REAL NOT NULL,
        outcome TEXT NOT NULL CHECK (outcome IN ('delivered', 'failed', 'dead')),
        error TEXT
    )""",
    "CREATE INDEX attempts_delivery_id ON attempts (delivery_id)",
    "CREATE INDEX attempts_sink_started_at ON attempts (sink, started_at)",
    """CREATE TABLE state (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )""",
    f"PRAGMA application_id = {APPLICATION_ID}",
]


def _migrate_v1(conn: sqlite3.Connection) -> None:
    """The initial schema."""
    # Statement by statement: executescript() would COMMIT the open transaction.
    for statement in _V1:
        conn.execute(statement)


def _migrate_stored_index(conn: sqlite3.Connection) -> None:
    """``status`` judges a number's liveness on when its last SMS was STORED: the body's
    ``received_at`` can lie (a date in 9999 would silence the check for ever)."""
    conn.execute(
        "CREATE INDEX IF NOT EXISTS messages_destination_stored "
        "ON messages (destination, stored_at)"
    )


def _migrate_trust(conn: sqlite3.Connection) -> None:
    """Trust (issue 10): the authenticity verdict on messages; reject codes, evidence
    and releases.  Existing rows keep everything: their messages were never checked
    (``authenticated`` NULL) and their rejects get the code their reason implies."""
    for statement in (
        "ALTER TABLE messages ADD COLUMN authenticated INTEGER CHECK (authenticated IN (0, 1))",
        "ALTER TABLE messages ADD COLUMN auth_reason TEXT",
        "ALTER TABLE rejects ADD COLUMN code TEXT NOT NULL DEFAULT 'malformed'",
        "ALTER TABLE rejects ADD COLUMN evidence TEXT",
        "ALTER TABLE rejects ADD COLUMN released_at TEXT",
        "ALTER TABLE rejects ADD COLUMN released_sms_id TEXT",
        # The two reasons sync.py wrote before codes existed.
        """UPDATE rejects SET code = CASE
            WHEN reason LIKE 'email is % bytes, over %' THEN 'oversized'
            WHEN reason LIKE 'the server failed % times to return this email%' THEN 'unfetchable'
            ELSE 'malformed' END""",
        "CREATE INDEX rejects_code ON rejects (code, id)",
    ):
        conn.execute(statement)


def _migrate_parsing(conn: sqlite3.Connection) -> None:
    """``parsing``: emails whose parse has started and whose batch is not committed yet.

    A row is written (committed) before its email is parsed and deleted by the
    ingest transaction that stores the outcome; a row left by another process
    means that process died while parsing (a crash, or the watchdog ending a
    stall).  ``origin`` is the JSON of the email's origin; ``attempts`` counts
    the processes that started parsing it; ``run`` names the last of them.
    """
    conn.execute(
        """CREATE TABLE parsing (
            origin TEXT PRIMARY KEY,
            attempts INTEGER NOT NULL,
            run TEXT NOT NULL,
            started_at TEXT NOT NULL
        ) WITHOUT ROWID"""
    )


def _migrate_reject_codes(conn: sqlite3.Connection) -> None:
    """Finer reject codes (issue 12): a ``malformed`` reject stored before gets the
    code its reason implies (``missing_field``, ``invalid_date_time``, ...), as the
    parser now writes it; a reason none of the patterns knows stays ``malformed``."""
    rows = conn.execute("SELECT id, reason FROM rejects WHERE code = 'malformed'").fetchall()
    coded = [(reject_code_for(str(reason)), rowid) for rowid, reason in rows]
    conn.executemany(
        "UPDATE rejects SET code = ? WHERE id = ?", [c for c in coded if c[0] != "malformed"]
    )


#: Forward migrations; ``MIGRATIONS[n]`` takes the schema from version n to n + 1.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _migrate_v1,
    _migrate_stored_index,
    _migrate_trust,
    _migrate_parsing,
    _migrate_reject_codes,
]
SCHEMA_VERSION = len(MIGRATIONS)

_HINTS = {
    sqlite3.SQLITE_FULL: "the disk is full: free space on the filesystem that holds it",
    sqlite3.SQLITE_BUSY: (
        "the database is locked: another process held it for more than 30 s; "
        "find it (fuser / lsof on the file) and stop it"
    ),
    sqlite3.SQLITE_LOCKED: "the database is locked by another statement of this process",
    sqlite3.SQLITE_NOTADB: (
        "the file is not an SQLite database: point database.path at an "
        "inbound-mail database or at a new file"
    ),
    sqlite3.SQLITE_CORRUPT: (
        "the database file is corrupt: restore a backup or salvage it with `sqlite3 FILE .recover`"
    ),
    sqlite3.SQLITE_CANTOPEN: (
        "the file cannot be opened: check that its directory exists and is writable"
    ),
    sqlite3.SQLITE_READONLY: (
        "the database is read-only: check the permissions of the file and of its "
        "directory (SQLite creates FILE-wal and FILE-shm beside it)"
    ),
    sqlite3.SQLITE_PERM: "permission denied: check the permissions of the file and its directory",
    sqlite3.SQLITE_IOERR: "an I/O error: check the disk and the filesystem",
}


def translate_error(exc: sqlite3.Error, path: Path | str, doing: str) -> StoreError:
    """A :class:`StoreError` naming the file, what failed and what to fix."""
    code = getattr(exc, "sqlite_errorcode", None)
    hint = _HINTS.get(code & 0xFF) if isinstance(code, int) else None
    if hint is None and "not a database" in str(exc):
        hint = _HINTS[sqlite3.SQLITE_NOTADB]
    detail = f"{hint} ({exc})" if hint else str(exc)
    return StoreError(f"database {path}: {doing}: {detail}")


def connect(path: Path) -> sqlite3.Connection:
    """Create ``path`` (mode 0600) if missing, connect, set the pragmas and migrate."""
    before = _create_private(path)
    try:
        # isolation_level=None: the sqlite3 module never opens transactions on
        # its own; the store issues BEGIN IMMEDIATE / COMMIT itself.
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    except sqlite3.Error as exc:
        raise translate_error(exc, path, "cannot open") from exc
    try:
        _configure(conn, path)
        _migrate(conn, path)
        # After the checks that tell what the file is (another application's
        # database, not a database): their advice comes first.
        after = _lstat(path)
        if not os.path.samestat(before, after):
            raise StoreError(f"database {path} was replaced while it was opened; try again")
        check_private_file(after, path, f"database {path}", mode=True)
    except BaseException:
        conn.close()
        raise
    return conn


def connect_readonly(path: Path) -> sqlite3.Connection:
    """Open an existing database read-only (``mode=ro``): never created, never migrated.

    For the read commands (``messages``, ``rejects``, ``deliveries``, ``status``):
    a mistyped path is an error rather than a new empty database, and a file the
    user may read but not write can still be read.  A WAL database needs its
    -shm file: when SQLite cannot create one (a read-only directory, with no
    daemon running, so no -wal to miss either), the file is read as immutable.
    """
    if not path.exists():
        raise StoreError(
            f"database {path} does not exist: point --db or [database].path at the "
            "daemon's database (`inbound-mail run` or `import` creates it)"
        )
    if path.is_dir():
        raise StoreError(f"database {path} is a directory: point --db at the database file")
    uri = path.resolve().as_uri()
    try:
        conn = _open_ro(f"{uri}?mode=ro", path)
    except StoreError:
        if Path(f"{path}-wal").exists():
            raise  # a live WAL: reading the main file alone could show stale rows
        conn = _open_ro(f"{uri}?immutable=1", path)
    try:
        version = _check_version(conn, path)
    except sqlite3.Error as exc:
        conn.close()
        raise translate_error(exc, path, "cannot read") from exc
    except BaseException:
        conn.close()
        raise
    if version == 0:
        conn.close()
        raise StoreError(
            f"database {path}: empty, not an inbound-mail database yet: point --db or "
            "[database].path at the daemon's database"
        )
    return conn


def _open_ro(uri: str, path: Path) -> sqlite3.Connection:
    """Connect through ``uri`` and read the schema once, so that a file SQLite cannot
    read fails here (it opens lazily)."""
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None)
    except sqlite3.Error as exc:
        raise translate_error(exc, path, "cannot open") from exc
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        conn.close()
        raise translate_error(exc, path, "cannot open") from exc
    return conn


def _create_private(path: Path) -> os.stat_result:
    """Create the file 0600 before SQLite does (it would use 0644 under the usual
    umask), and refuse a symlink there: SQLite would follow it, and create the
    database where it points.  Returns the file's ``lstat``, checked by
    :func:`check_private_file` but for its mode.

    An existing file is never opened here: closing any descriptor of a database
    file drops the POSIX locks that SQLite connections of this process hold on
    it.  SQLite creates FILE-wal and FILE-shm with the mode of the database
    file (os_unix.c copies it), so they are private too.
    """
    try:
        # O_EXCL fails on any symlink, dangling or not: never created through one.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StoreError(
            f"database {path}: cannot create the file: {exc.strerror}; "
            "check that the directory exists and is writable"
        ) from exc
    else:
        os.close(fd)
    info = _lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise StoreError(
            f"database {path} is a symbolic link; refusing to follow it: "
            "point database.path at the real file"
        )
    check_private_file(info, path, f"database {path}", mode=False)
    return info


def _lstat(path: Path) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as exc:
        raise StoreError(f"database {path}: cannot open: {exc.strerror}") from exc


def check_private_file(
    info: os.stat_result, path: Path | str, what: str, *, mode: bool = True
) -> None:
    """Raise :class:`StoreError` unless ``info`` (of a file opened with
    ``O_NOFOLLOW``, or an ``lstat``) is a regular file with one link, owned by
    this user (or opened by root) and, with ``mode``, that group and others can
    neither read nor write."""
    if not stat.S_ISREG(info.st_mode):
        raise StoreError(f"{what} is not a regular file: point it at a file")
    if info.st_nlink > 1:
        raise StoreError(f"{what} has {info.st_nlink} hard links; refusing a shared file")
    euid = os.geteuid()
    if euid not in (0, info.st_uid):  # root may open any user's file
        raise StoreError(
            f"{what} belongs to uid {info.st_uid}, not to this user (uid {euid}): "
            f"run as its owner, or chown it"
        )
    if mode and info.st_mode & 0o077:
        raise StoreError(
            f"{what} is open to group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"restrict it with: chmod 600 {path}"
        )


def _wal(conn: sqlite3.Connection) -> str:
    """``PRAGMA journal_mode = WAL``, retried for up to the busy timeout: the switch
    needs an exclusive lock, and SQLite answers SQLITE_BUSY at once, without its busy
    handler, while another connection is creating the same new file."""
    deadline = time.monotonic() + 30.0
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        mode = _wal(conn)
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as exc:
        raise translate_error(exc, path, "cannot open") from exc
    if str(mode).lower() != "wal":
        # Some network filesystems cannot do WAL; the store still works, slower.
        _log.warning("database %s: journal_mode is %s, not wal", path, mode)


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Apply the missing migrations, one transaction each; refuse newer or foreign files."""
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise translate_error(exc, path, "cannot open") from exc
        try:
            # Read inside the write transaction: another process may have
            # migrated between our previous check and this BEGIN.
            version = _check_version(conn, path)
            if version >= len(MIGRATIONS):
                conn.execute("COMMIT")
                return
            MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
            _log.info("database %s: migrated schema to version %d", path, version + 1)
        except sqlite3.Error as exc:
            rollback(conn)
            raise translate_error(exc, path, "cannot migrate the schema") from exc
        except BaseException:
            rollback(conn)
            raise


def _check_version(conn: sqlite3.Connection, path: Path) -> int:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
    if version > len(MIGRATIONS):
        raise StoreError(
            f"database {path}: schema version {version} is newer than this inbound-mail "
            f"supports (version {len(MIGRATIONS)}); upgrade inbound-mail"
        )
    foreign = app_id not in (0, APPLICATION_ID)
    if version == 0 and not foreign:
        foreign = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0
    if foreign:
        raise StoreError(
            f"database {path}: an SQLite database of another application; "
            "point database.path at an inbound-mail database or at a new file"
        )
    return version


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if any, without masking the error that caused it."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            # The original error is the one worth reporting.
            _log.debug("rollback failed", exc_info=True)


# -- statements the store runs ------------------------------------------------
# Kept beside the DDL so that a column change and the SQL that uses it move together.

INSERT_MESSAGE = """INSERT OR IGNORE INTO messages (id, originator, destination, date_time,
    received_at, text, keyword, message_id, email_date, subject, sender, stored_at,
    authenticated, auth_reason)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
INSERT_EMAIL = """INSERT OR IGNORE INTO emails (sms_id, message_id, kind, account, folder,
    uidvalidity, uid, path, key, seen_at, duplicate) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
INSERT_RAW = "INSERT INTO raw_emails (email_id, raw, stored_at) VALUES (?, ?, ?)"
INSERT_REJECT = """INSERT OR IGNORE INTO rejects (reason, raw, rejected_at, origin, kind,
    account, folder, uidvalidity, uid, path, key, message_id, sender, subject, code, evidence)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
RELEASE_REJECT = """UPDATE rejects SET released_at = ?, released_sms_id = ?
    WHERE id = ? AND released_at IS NULL"""
INSERT_DELIVERY = """INSERT OR IGNORE INTO deliveries (sms_id, sink, status, attempts,
    created_at, next_attempt_at) VALUES (?, ?, 'pending', 0, ?, ?)"""
UPSERT_CHECKPOINT = """INSERT INTO checkpoints (account, folder, uidvalidity, last_uid, updated_at)
    VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (account, folder) DO UPDATE SET
        last_uid = CASE WHEN uidvalidity = excluded.uidvalidity
                        THEN max(last_uid, excluded.last_uid) ELSE excluded.last_uid END,
        uidvalidity = excluded.uidvalidity,
        updated_at = excluded.updated_at"""
UPSERT_ACK = """INSERT INTO pending_acks (account, folder, uidvalidity, uid, action, created_at)
    VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (account, folder, uidvalidity, uid) DO UPDATE SET action = excluded.action"""
DELETE_ACK = """DELETE FROM pending_acks
    WHERE account = ? AND folder = ? AND uidvalidity = ? AND uid = ?"""
GET_CHECKPOINT = """SELECT account, folder, uidvalidity, last_uid FROM checkpoints
    WHERE account = ? AND folder = ?"""
PENDING_ACKS = """SELECT account, folder, uidvalidity, uid, action FROM pending_acks
    WHERE account = ? AND folder = ? ORDER BY uidvalidity, uid"""
KNOWN_UIDS = """SELECT uid FROM emails WHERE account = ? AND folder = ? AND uidvalidity = ?
        AND uid IS NOT NULL AND uid IN (SELECT value FROM json_each(?))
    UNION SELECT uid FROM rejects WHERE account = ? AND folder = ? AND uidvalidity = ?
        AND uid IS NOT NULL AND uid IN (SELECT value FROM json_each(?))"""
REJECT_COLUMNS = """id, code, reason, rejected_at, origin, kind, account, folder, uidvalidity,
    uid, path, key, message_id, sender, subject, evidence, released_at, released_sms_id,
    length(raw) AS size"""
PENDING = """SELECT d.id, d.sink, d.status, d.attempts, d.created_at, d.next_attempt_at,
        d.last_error, m.originator, m.destination, m.date_time, m.received_at, m.text,
        m.keyword, m.message_id, m.email_date, m.subject, m.sender, m.authenticated,
        m.auth_reason
    FROM deliveries d JOIN messages m ON m.id = d.sms_id
    WHERE d.sink = ? AND d.status = 'pending' AND d.next_attempt_at <= ?
    ORDER BY d.id LIMIT ?"""
NEXT_DUE = "SELECT min(next_attempt_at) FROM deliveries WHERE sink = ? AND status = 'pending'"
INSERT_ATTEMPT = """INSERT INTO attempts (delivery_id, sink, started_at, duration, outcome, error)
    SELECT id, sink, ?, ?, ?, ? FROM deliveries WHERE id = ?"""
UPDATE_DELIVERY = """UPDATE deliveries SET
        attempts = attempts + 1,
        status = CASE :outcome WHEN 'failed' THEN status ELSE :outcome END,
        delivered_at = CASE :outcome WHEN 'delivered' THEN :finished ELSE delivered_at END,
        next_attempt_at = CASE :outcome WHEN 'failed' THEN :next ELSE next_attempt_at END,
        last_error = CASE :outcome WHEN 'delivered' THEN NULL ELSE :error END
    WHERE id = :id"""
# "WHERE true" keeps SQLite's parser from reading ON CONFLICT as a join constraint.
REQUEUE = """INSERT INTO deliveries (sms_id, sink, status, attempts, created_at, next_attempt_at)
    SELECT id, ?, 'pending', 0, ?, ? FROM messages WHERE true {where}
    ORDER BY received_at, stored_at
    ON CONFLICT (sms_id, sink) DO UPDATE SET status = 'pending', attempts = 0,
        next_attempt_at = excluded.next_attempt_at, last_error = NULL, delivered_at = NULL"""
RETRY_DEAD = """UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?,
        last_error = NULL
    WHERE status = 'dead' AND (? IS NULL OR sink = ?)"""
DUE_NOW = """UPDATE deliveries SET next_attempt_at = min(next_attempt_at, ?)
    WHERE status = 'pending' AND (? IS NULL OR sink = ?)"""
# A counter that every reschedule bumps, in the same transaction: the delivery
# workers (other processes, for the CLI) poll it while they wait for a row to be due.
BUMP_STATE = """INSERT INTO state (key, value, updated_at) VALUES (?, '1', ?)
    ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1,
        updated_at = excluded.updated_at"""
# The status column says what the filters of Store.deliveries() select: a pending
# row that failed at least once reads "failed".
DELIVERIES = """SELECT d.id, d.sms_id, d.sink,
        CASE WHEN d.status = 'pending' AND d.attempts > 0 THEN 'failed' ELSE d.status END
            AS status,
        d.attempts, d.last_error, d.created_at,
        d.next_attempt_at, d.delivered_at, m.originator, m.destination, m.date_time,
        m.received_at, m.text
    FROM deliveries d JOIN messages m ON m.id = d.sms_id WHERE true {where}
    ORDER BY d.id LIMIT ?"""
BACKLOG = """SELECT sink, status, attempts > 0 AS retried, count(*) AS n
    FROM deliveries GROUP BY sink, status, retried ORDER BY sink"""
ATTEMPT_COUNTS = """SELECT count(*) AS attempts,
        count(*) FILTER (WHERE outcome = 'delivered') AS delivered,
        count(*) FILTER (WHERE outcome = 'failed') AS failed,
        count(*) FILTER (WHERE outcome = 'dead') AS dead
    FROM attempts WHERE sink = ? AND started_at >= ?"""
NTH_DURATION = """SELECT duration FROM attempts
    WHERE sink = ? AND started_at >= ? AND outcome = 'delivered'
    ORDER BY duration LIMIT 1 OFFSET ?"""
LAST_DELIVERY = "SELECT max(delivered_at) FROM deliveries WHERE sink = ?"
LAST_BY_DESTINATION = """SELECT destination, max(received_at) AS received_at
    FROM messages GROUP BY destination ORDER BY destination"""
LAST_STORED_BY_DESTINATION = """SELECT destination, max(stored_at) AS stored_at
    FROM messages GROUP BY destination ORDER BY destination"""
SET_STATE = """INSERT INTO state (key, value, updated_at) VALUES (?, ?, ?)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"""
UNAUTHENTICATED_SMS = "SELECT count(*) FROM messages WHERE authenticated = 0 AND stored_at >= ?"
UNAUTHENTICATED_REJECTS = """SELECT count(*) FROM rejects
    WHERE code = 'unauthenticated' AND released_at IS NULL AND rejected_at >= ?"""
# ``crashed`` is 1 when the row was left by a process that died mid-parse (the
# store decides): a new attempt.  A retry by the same run (after an ordinary
# error, e.g. a failed commit) or a live process's row counts nothing.
MARK_PARSING = """INSERT INTO parsing (origin, attempts, run, started_at)
    VALUES (:origin, 1, :run, :stamp)
    ON CONFLICT (origin) DO UPDATE SET
        attempts = attempts + :crashed,
        run = excluded.run,
        started_at = excluded.started_at"""
PARSING_ROWS = """SELECT origin, attempts, run FROM parsing
    WHERE origin IN (SELECT value FROM json_each(?))"""
DELETE_PARSING = "DELETE FROM parsing WHERE origin = ?"
ANY_PARSING = "SELECT EXISTS (SELECT 1 FROM parsing)"
# Rows another run left: only those can be crashes (this run's own never are).
OTHER_RUN_PARSING = "SELECT EXISTS (SELECT 1 FROM parsing WHERE run != ?)"
