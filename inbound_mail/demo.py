"""The quick-start demo: a throwaway Dovecot fed from ``fixtures/``, the daemon
running against it with a JSON Lines sink on stdout, one SMS appended while it
runs, then a clean stop.  Everything lives in one new folder; the Dovecot in it
is removed at the end, the database is kept, and the demo prints the exact
commands that look into it (``inbound-mail --db PATH rejects``, ...)."""

from __future__ import annotations

import io
import os
import shlex
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from .config import load_config
from .output import write_rows
from .service import Daemon
from .store import Store
from .testing.dovecot import DovecotServer
from .testing.emails import build_provider_email
from .testing.wait import wait_until

__all__ = ["run_demo"]

_USER, _PASSWORD = "sms", "demo-password"
_CONFIG = """\
[database]
path = "inbound-mail.db"

[[accounts]]
name = "demo"
host = "127.0.0.1"
port = {port}
tls = "implicit"
ca_file = "{ca_file}"
username = "{user}"
password_file = "password"
after = "seen"

[[sinks]]
name = "stdout"
type = "jsonl"
path = "-"
"""


def run_demo(
    fixtures: Path, *, keep: Path | None, echo: Callable[[str], None], stop: threading.Event
) -> Path:
    """Run the demo end to end in ``keep`` (default: a new temporary folder, kept) and
    return its database.  With ``keep``, Dovecot's folder stays too."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        root = keep.resolve()
    else:
        root = Path(tempfile.mkdtemp(prefix="inbound-mail-demo-"))
    try:
        _demo_in(root, fixtures, echo)
    finally:
        if keep is None:
            shutil.rmtree(root / "dovecot", ignore_errors=True)
    db = root / "inbound-mail.db"
    where = shlex.quote(str(db))
    echo(
        f"# the database is kept in {root}/; look into it with:\n"
        f"#   inbound-mail --db {where} messages\n"
        f"#   inbound-mail --db {where} rejects\n"
        f"#   inbound-mail --db {where} deliveries"
    )
    return db


def _demo_in(root: Path, fixtures: Path, echo: Callable[[str], None]) -> None:
    emails = sorted(fixtures.glob("*.eml"))
    with DovecotServer(root / "dovecot", users={_USER: _PASSWORD}) as server:
        server.deliver_files(_USER, "INBOX", [path.read_bytes() for path in emails])
        where = f"127.0.0.1:{server.imaps_port}"
        echo(f"# Dovecot on {where} (TLS) holds {len(emails)} emails from {fixtures}/")
        config_path = _write_config(root, server)
        daemon = Daemon(load_config(config_path))
        threading.Thread(target=_script, args=(daemon, server, root, echo), daemon=True).start()
        daemon.run()
    table = io.StringIO()
    with Store.open(root / "inbound-mail.db") as store:
        write_rows(
            store.messages(),
            "table",
            table,
            columns=("received_at", "originator", "destination", "text"),
        )
    echo("# stored SMS (inbound-mail messages):\n" + table.getvalue().rstrip("\n"))


def _write_config(root: Path, server: DovecotServer) -> Path:
    password = root / "password"
    fd = os.open(password, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(_PASSWORD)
    config = root / "inbound-mail.toml"
    config.write_text(
        _CONFIG.format(port=server.imaps_port, ca_file=server.ca_file, user=_USER), encoding="utf-8"
    )
    return config


def _script(daemon: Daemon, server: DovecotServer, root: Path, echo: Callable[[str], None]) -> None:
    """Wait for the backlog, append one new SMS, wait for it, then stop the daemon."""
    try:
        db = root / "inbound-mail.db"
        wait_until(lambda: _delivered(db) > 0 and _pending(db) == 0, timeout=60)
        echo("# caught up; appending a new SMS to the mailbox while the daemon IDLEs ...")
        before = _delivered(db)
        raw = build_provider_email(
            "+393471112233", "+393339998877", _now_stamp(), "Hello from the demo! \u2709"
        )
        server.append(_USER, "INBOX", raw)
        wait_until(lambda: _delivered(db) > before, timeout=30)
        echo("# the new SMS arrived; stopping the daemon")
    finally:
        daemon.request_stop()


def _delivered(db: Path) -> int:
    with Store.open(db) as store:
        return store.backlog().get("stdout", {}).get("delivered", 0)


def _pending(db: Path) -> int:
    with Store.open(db) as store:
        return store.backlog().get("stdout", {}).get("pending", 0)


def _now_stamp() -> str:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    return datetime.now(ZoneInfo("Europe/Rome")).strftime("%Y%m%d%H%M%S")
