"""The quick-start demo: a throwaway Dovecot fed from ``fixtures/``, the daemon
running against it with a JSON Lines sink on stdout, one SMS appended while it
runs, then a clean stop.  Everything lives in one new folder; the Dovecot in it
is removed at the end, the database is kept, and the demo prints the exact
commands that look into it (``inbound-mail --db PATH rejects``, ...).

A dev entry point, not an ``inbound-mail`` command (it needs Dovecot and this
harness): ``./dev demo``, i.e. ``make demo``, i.e. ``python -m testsupport.demo``.

Trust works as in production (``authenticate = "require"``): the demo makes a
DKIM key for ``agiletelecom.com``, signs the emails it feeds with it, and answers
the key's DNS lookups with a DNS server of its own on 127.0.0.1
(``[parse] dns_servers``).  A forged email (the provider's From, no signature)
is appended too: it ends in ``rejects``, never on stdout."""

from __future__ import annotations

import io
import os
import shlex
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import click

from inbound_mail.config.reader import load_config
from inbound_mail.logs import setup_logging
from inbound_mail.output import write_rows
from inbound_mail.service.daemon import Daemon
from inbound_mail.store.db import Store
from inbound_mail.testing.emails import build_provider_email
from inbound_mail.testing.wait import wait_until

from .dkim import DkimKey
from .dns import DnsServer
from .dovecot import DovecotServer

__all__ = ["run_demo"]

_USER, _PASSWORD = "sms", "demo-password"
_CONFIG = """\
[database]
path = "inbound-mail.db"

[parse]
authenticate = "require"
dns_servers = ["{dns}"]

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
    key = DkimKey.generate(selector="demo")
    with (
        DnsServer() as dns,
        DovecotServer(root / "dovecot", users={_USER: _PASSWORD}) as server,
    ):
        key.publish(dns)
        server.deliver_files(_USER, "INBOX", [_signed(key, path.read_bytes()) for path in emails])
        where = f"127.0.0.1:{server.imaps_port}"
        echo(f"# Dovecot on {where} (TLS) holds {len(emails)} emails from {fixtures}/")
        echo(f"# ... each DKIM-signed with a demo key, published by a DNS server on {dns.address}")
        config_path = _write_config(root, server, dns)
        daemon = Daemon(load_config(config_path))
        script = (daemon, server, key, root, echo)
        threading.Thread(target=_script, args=script, daemon=True).start()
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
    with Store.open(root / "inbound-mail.db") as store:
        forged = [r for r in store.rejects() if r["code"] == "unauthenticated"]
    for reject in forged:
        echo(f"# reject {reject['id']} (inbound-mail rejects): {reject['reason'][:120]}...")


def _signed(key: DkimKey, raw: bytes) -> bytes:
    """The email signed like the provider's; one the signer cannot read stays as it is."""
    try:
        return key.sign(raw)
    except Exception:  # a deliberately broken fixture (garbage bytes): fed unsigned
        return raw


def _write_config(root: Path, server: DovecotServer, dns: DnsServer) -> Path:
    password = root / "password"
    fd = os.open(password, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(_PASSWORD)
    config = root / "inbound-mail.toml"
    config.write_text(
        _CONFIG.format(port=server.imaps_port, ca_file=server.ca_file, user=_USER, dns=dns.address),
        encoding="utf-8",
    )
    return config


def _script(
    daemon: Daemon, server: DovecotServer, key: DkimKey, root: Path, echo: Callable[[str], None]
) -> None:
    """Wait for the backlog, append a forged and a new SMS, wait for them, then stop."""
    try:
        db = root / "inbound-mail.db"
        wait_until(lambda: _delivered(db) > 0 and _pending(db) == 0, timeout=60)
        echo("# caught up; appending a forged email (no signature) and a new SMS ...")
        before = _delivered(db)
        forged = build_provider_email(
            "+393470000000", "+393339998877", _now_stamp(), "Forged: send the code to me"
        )
        server.append(_USER, "INBOX", forged)
        raw = build_provider_email(
            "+393471112233", "+393339998877", _now_stamp(), "Hello from the demo! \u2709"
        )
        server.append(_USER, "INBOX", key.sign(raw))
        wait_until(lambda: _delivered(db) > before and _forged(db) > 0, timeout=30)
        echo("# the new SMS arrived, the forged one was rejected; stopping the daemon")
    finally:
        daemon.request_stop()


def _delivered(db: Path) -> int:
    with Store.open(db) as store:
        return store.backlog().get("stdout", {}).get("delivered", 0)


def _forged(db: Path) -> int:
    with Store.open(db) as store:
        return sum(1 for r in store.rejects() if r["code"] == "unauthenticated")


def _pending(db: Path) -> int:
    with Store.open(db) as store:
        return store.backlog().get("stdout", {}).get("pending", 0)


def _now_stamp() -> str:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    return datetime.now(ZoneInfo("Europe/Rome")).strftime("%Y%m%d%H%M%S")


@click.command()
@click.option(
    "--fixtures",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("fixtures"),
    show_default=True,
)
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the demo's state (database, JSON Lines, Dovecot) in this folder.",
)
def main(fixtures: Path, keep: Path | None) -> None:
    """Start a throwaway Dovecot fed from FIXTURES, run the daemon on it, show SMS arriving."""
    setup_logging("INFO", "text")
    run_demo(fixtures, keep=keep, echo=click.echo, stop=threading.Event())


if __name__ == "__main__":
    main(prog_name="./dev demo")
