"""Push latency and idle CPU of the daemon, beside a bare imapclient IDLE.

One message at a time, this process APPENDs a provider email and timestamps
(``time.monotonic``: one clock for every process here) what follows the
APPEND's completion.  Two cases:

- spaced        each APPEND after a gap of 50-150 ms once the previous one was seen
- back-to-back  each APPEND the instant the previous one was seen (its EXISTS by
                the bare session, its committed row for the daemon): a burst,
                where mail lands while the daemon's pass still runs

- ``raw``     a bare imapclient IDLE session (a thread here, alone on the folder)
              reads ``* N EXISTS``
- ``commit``  the daemon (``inbound-mail run``, a child process, IDLE, ``after = "seen"``)
              has committed the SMS: its row is visible in SQLite (polled every 5 ms)
- ``sink``    its JSON line comes out of the daemon's ``jsonl`` sink, which writes into
              a FIFO read by a thread here

The bare IDLE runs first, then the daemon: side by side, the daemon's STORE
\\Seen would start Dovecot's 0.5 s notify timer early in the bare session.
Afterwards the daemon and a bare IDLE child process wait ``idle_window``
seconds with nothing arriving; their CPU time comes from ``/proc/PID/stat``.

The server is any of the test harnesses (``DovecotServer``, ``CyrusServer``):
they share the interface used here.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import PYTHON, REPO, account_table, proc_cpu_seconds, proc_peak_rss_mb, toml_table
from _imap_children import connect

from inbound_mail.parse.message import parse_email
from inbound_mail.testing.emails import build_provider_email
from inbound_mail.testing.wait import wait_until

_POLL = 0.005
_SEEN_TIMEOUT = 10.0
SPACED = (0.05, 0.15)


@dataclass(slots=True)
class PushResult:
    raw_ms: list[float] = field(default_factory=list)
    commit_ms: list[float] = field(default_factory=list)
    sink_ms: list[float] = field(default_factory=list)
    missed: dict[str, int] = field(default_factory=lambda: {"raw": 0, "commit": 0, "sink": 0})
    idle_window: float = 0.0
    daemon_cpu_s: float = 0.0
    baseline_cpu_s: float = 0.0
    daemon_rss_mb: float = 0.0


class _Watcher(threading.Thread):
    """Records when each awaited key shows up; subclasses feed ``seen``."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.times: dict[Any, float] = {}
        self.ready = threading.Event()
        self.stop = threading.Event()

    def seen(self, key: Any) -> None:
        self.times.setdefault(key, time.monotonic())


class _RawIdle(_Watcher):
    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__("raw-idle")
        self.spec = spec
        self.exists_at_start = 0

    def run(self) -> None:
        client = connect(self.spec)
        selected = client.select_folder("INBOX")
        self.exists_at_start = int(selected[b"EXISTS"])
        client.idle()
        self.ready.set()
        while not self.stop.is_set():
            news = False
            for response in client.idle_check(timeout=0.2):
                if len(response) >= 2 and response[1] == b"EXISTS":
                    self.seen(int(response[0]))
                    news = True
            if news:
                # As any client that acts on new mail (the daemon too): DONE, then IDLE
                # afresh.  A session that stays in IDLE has Dovecot's 0.5 s notify
                # timer armed early by its own sync of the previous message, and
                # hears of the next one 0.5 s minus the gap after it: not a baseline.
                client.idle_done()
                client.idle()
        client.idle_done()
        client.logout()


class _FifoReader(_Watcher):
    def __init__(self, path: Path) -> None:
        super().__init__("fifo-reader")
        self.path = path

    def run(self) -> None:
        self.ready.set()
        with self.path.open("rb") as fifo:  # blocks until the sink opens it
            for line in fifo:
                self.seen(json.loads(line)["id"])


def _write_config(server: Any, user: str, work: Path, fifo: Path) -> Path:
    path = work / "push.toml"
    path.write_text(
        toml_table("[database]", {"path": work / "push.db"})
        + toml_table("[log]", {"level": "INFO"})
        + account_table(server, user, after="seen")
        + toml_table("[[sinks]]", {"name": "fifo", "type": "jsonl", "path": fifo}),
        encoding="utf-8",
    )
    return path


def measure_push(
    server: Any,
    user: str,
    work: Path,
    *,
    count: int,
    idle_window: float,
    gap: tuple[float, float] | None = SPACED,
) -> PushResult:
    """Run the whole measurement; see the module docstring.  ``gap=None`` is the
    back-to-back case; ``idle_window=0`` leaves out the idle CPU."""
    spec = {
        "host": server.host,
        "port": server.imaps_port,
        "username": user,
        "password": server.password(user),
        "ca_file": str(server.ca_file),
    }
    result = PushResult()
    # The bare IDLE runs alone first: beside the daemon, the daemon's STORE \Seen on
    # the previous message starts Dovecot's 0.5 s notify timer early in the bare
    # session, which then looks faster than IDLE is.
    raw = _RawIdle(spec)
    raw.start()
    raw.ready.wait(30)
    with server.session(user) as client:
        for index in range(count):
            seq = raw.exists_at_start + index + 1
            appended = _append(client, index, gap)[1]
            _until(lambda seq=seq: seq in raw.times, appended)
            _record(result, "raw", raw.times.get(seq), appended)
    raw.stop.set()
    raw.join(5)
    _measure_daemon(server, user, work, spec, count, idle_window, gap, result)
    return result


def _measure_daemon(
    server: Any,
    user: str,
    work: Path,
    spec: dict[str, Any],
    count: int,
    idle_window: float,
    gap: tuple[float, float] | None,
    result: PushResult,
) -> None:
    fifo = work / "push.fifo"
    os.mkfifo(fifo)
    config = _write_config(server, user, work, fifo)
    log_path = work / "push-daemon.log"
    reader = _FifoReader(fifo)
    reader.start()
    with log_path.open("wb") as log:
        daemon = subprocess.Popen(
            [PYTHON, "-m", "inbound_mail", "--config", str(config), "run"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        wait_until(
            lambda: b"state=idle" in log_path.read_bytes(), 30, 0.05, message="the daemon IDLEs"
        )
        sent: list[tuple[str, float]] = []
        with server.session(user) as client:
            for index in range(count):
                sms_id, appended = _append(client, count + index, gap)
                sent.append((sms_id, appended))
                _record(
                    result,
                    "commit",
                    _poll_row(work / "push.db", sms_id, appended + _SEEN_TIMEOUT),
                    appended,
                )
                if gap is not None:  # back-to-back does not wait for the sink
                    _until(lambda sms_id=sms_id: sms_id in reader.times, appended)
        for sms_id, appended in sent:
            _until(lambda sms_id=sms_id: sms_id in reader.times, appended)
            _record(result, "sink", reader.times.get(sms_id), appended)
        time.sleep(2.0)  # the last acks and deliveries settle
        if idle_window > 0:
            _idle_cpu(daemon.pid, spec, idle_window, result)
        result.daemon_rss_mb = proc_peak_rss_mb(daemon.pid)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)


_rng = random.Random(7)


def _append(client: Any, index: int, gap: tuple[float, float] | None) -> tuple[str, float]:
    """APPEND one provider email after a gap (none: at once); (its SMS id, when the
    APPEND completed)."""
    if gap is not None:
        time.sleep(_rng.uniform(*gap))
    email = build_provider_email(
        "+393301234567", "+393331234333", "20240501120000", f"push {index} {time.time_ns()}"
    )
    sms_id = parse_email(email).id  # type: ignore[union-attr]  # a valid SMS: a record
    client.append("INBOX", email)
    return sms_id, time.monotonic()


def _until(predicate: Any, appended: float) -> None:
    deadline = appended + _SEEN_TIMEOUT
    while not predicate() and time.monotonic() < deadline:
        time.sleep(_POLL)


def _record(result: PushResult, kind: str, when: float | None, appended: float) -> None:
    if when is None:
        result.missed[kind] += 1
    else:
        getattr(result, f"{kind}_ms").append((when - appended) * 1000)


def _poll_row(db: Path, sms_id: str, deadline: float) -> float | None:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        while time.monotonic() < deadline:
            if conn.execute("SELECT 1 FROM messages WHERE id = ?", (sms_id,)).fetchone():
                return time.monotonic()
            time.sleep(_POLL)
    finally:
        conn.close()
    return None


def _idle_cpu(daemon_pid: int, spec: dict[str, Any], window: float, result: PushResult) -> None:
    spec_path = Path(f"/tmp/idle-spec-{os.getpid()}.json")
    spec_path.write_text(json.dumps(spec))
    baseline = subprocess.Popen(
        [PYTHON, str(Path(__file__).with_name("_imap_children.py")), "idle", str(spec_path)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
    )
    try:
        assert baseline.stdout is not None
        baseline.stdout.readline()  # "idling"
        time.sleep(1.0)
        before = proc_cpu_seconds(daemon_pid), proc_cpu_seconds(baseline.pid)
        time.sleep(window)
        after = proc_cpu_seconds(daemon_pid), proc_cpu_seconds(baseline.pid)
    finally:
        baseline.kill()
        baseline.wait()
        spec_path.unlink(missing_ok=True)
    result.idle_window = window
    result.daemon_cpu_s = after[0] - before[0]
    result.baseline_cpu_s = after[1] - before[1]
