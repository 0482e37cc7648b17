"""The ``inbound-mail`` command: thin click commands over the library.

Library errors (:class:`~inbound_mail.errors.InboundMailError`) become
``click.ClickException`` here and nowhere else.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import __version__
from .errors import InboundMailError
from .logs import setup_logging
from .models import REJECT_CODES
from .output import FORMATS, escape_control, is_terminal, write_rows
from .sources import DEFAULT_BATCH

if TYPE_CHECKING:
    from .config.model import Config

# Only what building the commands needs is imported above; each command imports its
# own machinery, so ``--help`` loads none of it and ``import`` none of the daemon's.

MESSAGE_COLUMNS = ("received_at", "originator", "destination", "text", "id")
REJECT_COLUMNS = ("id", "rejected_at", "code", "origin", "reason")
DELIVERY_COLUMNS = (
    "id",
    "sink",
    "status",
    "attempts",
    "originator",
    "destination",
    "next_attempt_at",
    "last_error",
)


class _Group(click.Group):
    """Turns library errors into one clear line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InboundMailError as exc:
            raise click.ClickException(str(exc)) from exc


@dataclass
class _State:
    config_path: Path | None
    db: Path | None
    log_level: str | None
    log_format: str | None
    _config: Config | None = None

    def config(self) -> Config:
        """The config file if one is given or found, else the built-in defaults."""
        if self._config is None:
            from .config.reader import default_config_path, load_config

            self.config_path = self.config_path or default_config_path()
            self._config = load_config(self.config_path, db_override=self.db)
            self.apply_logging(self._config)
        return self._config

    def reload(self) -> Config:
        """The same config file read again (the daemon's SIGHUP)."""
        from .config.reader import load_config

        return load_config(self.config_path, db_override=self.db)

    def apply_logging(self, config: Config) -> None:
        """``--log-level`` / ``--log-format`` when given, else the config's ``[log]``."""
        setup_logging(self.log_level or config.log.level, self.log_format or config.log.format)


pass_state = click.make_pass_decorator(_State)
format_option = click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True
)
raw_option = click.option(
    "--raw",
    is_flag=True,
    help="Cells exactly as stored: no escaping of control characters on a terminal "
    "or in a table, no ' before CSV cells a spreadsheet would run as formulas.",
)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Config file [default: $INBOUND_MAIL_CONFIG, ./inbound-mail.toml, "
    "/etc/inbound-mail/config.toml].",
)
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    help="SQLite database (overrides the config).",
)
@click.option(
    "--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)
)
@click.option("--log-format", type=click.Choice(["text", "json"]))
@click.version_option(__version__, prog_name="inbound-mail")
@click.pass_context
def cli(
    ctx: click.Context,
    config_path: Path | None,
    db: Path | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Turn Agile Telecom's SMS-by-email feed into a reliable stream of SMS records."""
    ctx.obj = _State(config_path, db, log_level, log_format)


def _date(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"expected a date YYYY-MM-DD, got {value!r}") from exc


def _count(n: int, one: str, many: str) -> str:
    """``1 delivery``, ``2 deliveries``."""
    return f"{n} {one if n == 1 else many}"


# The words of the summaries whose plural is not for one ("1 duplicate", "1 file ...").
_SINGULAR = {"duplicates": "duplicate", "files that are not email": "file that is not email"}


def _summary(title: str, counts: dict[str, int]) -> None:
    words = [f"{v} {_SINGULAR.get(k, k) if v == 1 else k}" for k, v in counts.items()]
    click.echo(f"{title}: " + ", ".join(words), err=True)


# -- ingestion ------------------------------------------------------------------
@cli.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--no-deliver", is_flag=True, help="Store only; queue nothing for the configured sinks."
)
@click.option(
    "--batch-size",
    default=DEFAULT_BATCH,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Emails per transaction.",
)
@click.option(
    "--max-size",
    default=1024 * 1024,
    show_default=True,
    type=click.IntRange(1024, 2**31),
    help="Bytes; a larger email is rejected unparsed, its headers kept (as IMAP's max_size).",
)
@click.option(
    "--workers",
    type=click.IntRange(0, 64),
    default=None,
    help="Parse processes (0: one per core, at most 4; 1: no pool) [default: [parse] workers].",
)
@pass_state
def import_(
    state: _State,
    paths: tuple[Path, ...],
    no_deliver: bool,
    batch_size: int,
    max_size: int,
    workers: int | None,
) -> None:
    """Import .eml files, folders of them, mbox files and Maildir folders (detected by content).

    A path that cannot be read is reported (`cannot read PATH: reason`) and the rest is
    imported; the exit status is then 1.  Ctrl-C commits the emails read so far and stops:
    running the same import again stores the rest, without duplicates."""
    from .config.model import ParseOptions
    from .parse.authenticity import Verifier
    from .sources.importer import import_emails
    from .sources.local import count_emails, iter_emails
    from .sources.pool import ParsePool, auto_workers
    from .store.db import Store

    config = state.config()
    route = None
    if not no_deliver:
        from .delivery import make_router  # the outbox's machinery: only when delivering

        route = make_router(config.sinks)
    options = ParseOptions.from_config(config.parse)
    pool = ParsePool(options, auto_workers(config.parse.workers if workers is None else workers))
    tty = sys.stderr.isatty()
    total = count_emails(paths) if tty else None
    not_mail: list[Path] = []
    unreadable: list[Path] = []
    committed = [0]
    stop = threading.Event()

    def cannot_read(path: Path, reason: str) -> None:
        unreadable.append(path)
        click.echo(f"\ncannot read {escape_control(str(path))}: {escape_control(reason)}", err=True)

    def on_sigint(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt  # a second Ctrl-C: abandon the batch in hand
        stop.set()
        click.echo(
            "\ninterrupted: committing the emails read so far (Ctrl-C again to abandon them)",
            err=True,
        )

    # Signal handlers belong to the main thread; elsewhere Ctrl-C keeps its default.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if main else None
    try:
        with (
            pool,
            Store.open(
                config.database.path,
                raw_retention_days=config.database.raw_retention_days,
            ) as store,
            click.progressbar(
                length=total or 0,
                label="importing",
                file=sys.stderr,
                show_eta=True,
                show_pos=True,
                hidden=not (tty and total),
            ) as bar,
        ):
            emails = iter_emails(
                paths,
                on_skip=lambda path, reason: not_mail.append(Path(path)),
                on_error=cannot_read,
            )
            tally = import_emails(
                emails,
                store,
                options,
                route=route,
                batch_size=batch_size,
                max_size=max_size,
                verifier=Verifier.from_config(config.parse),
                on_batch=lambda r: committed.__setitem__(0, committed[0] + r.read),
                on_parsed=lambda: bar.update(1),
                should_stop=stop.is_set,
                pool=pool,
            )
    except KeyboardInterrupt:
        _interrupted(committed[0], abandoned=True)
        sys.exit(130)
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    extra = {"files that are not email": len(not_mail)} if not_mail else {}
    if unreadable:
        extra["paths that cannot be read"] = len(unreadable)
    _summary("imported", tally.as_dict() | extra)
    if stop.is_set():
        _interrupted(tally.read, abandoned=False)
        sys.exit(130)
    if unreadable:
        raise click.ClickException(
            f"{len(unreadable)} path{'s' if len(unreadable) != 1 else ''} could not be read "
            "(see `cannot read` above); everything else was imported"
        )


def _interrupted(committed: int, *, abandoned: bool) -> None:
    lost = "; the batch in hand was abandoned" if abandoned else ""
    click.echo(
        f"interrupted: {committed} email{'s' if committed != 1 else ''} committed{lost}. "
        "Run the same import again to store the rest: emails stored already are "
        "recognised, nothing is stored twice.",
        err=True,
    )


@cli.command()
@click.argument("file", type=click.File("rb"))
@pass_state
def parse(state: _State, file: Any) -> None:
    """Show what FILE (one email, or - for stdin) parses to; writes nothing.

    An mbox holding several emails: the first is parsed, and the count is said.
    Exit status: 0 an SMS, 1 rejected (from the provider, but malformed), 3 skipped (not from
    a sender)."""
    from .config.model import ParseOptions
    from .models import Rejected, Skipped
    from .parse.message import parse_email
    from .sources.local import first_of_mbox

    raw = file.read()
    mbox = first_of_mbox(raw)
    if mbox is not None:
        raw, count = mbox
        name = escape_control(str(getattr(file, "name", "<stdin>")))
        stdin = name == "<stdin>"
        click.echo(
            f"{'the input' if stdin else name} is an mbox holding {count} "
            f"email{'s' if count != 1 else ''}: parsing the first"
            + ("" if stdin else f" (`inbound-mail import {name}` reads them all)"),
            err=True,
        )
    outcome = parse_email(raw, ParseOptions.from_config(state.config().parse))
    if isinstance(outcome, Skipped):
        click.echo(f"skipped: {outcome.reason}")
        sys.exit(3)
    if isinstance(outcome, Rejected):
        click.echo(f"rejected: {outcome.reason}")
        sys.exit(1)
    click.echo(json.dumps(outcome.to_dict(), ensure_ascii=False, indent=2))


@cli.command()
@click.option(
    "--once",
    is_flag=True,
    help="One catch-up pass of every account and one delivery attempt, then exit.",
)
@pass_state
def run(state: _State, once: bool) -> None:
    """Run the daemon: IDLE on every account, store each SMS once, deliver to the sinks."""
    from .config.reader import require_accounts
    from .service.daemon import Daemon

    config = state.config()
    require_accounts(config)  # a daemon that reads nothing must not look healthy
    daemon = Daemon(config, reload=state.reload, configure_logging=state.apply_logging)
    if not once:
        sys.exit(daemon.run())
    result = daemon.run_once()
    for account, error in result.failures.items():
        click.echo(f"account {account!r} failed: {error}", err=True)
    sys.exit(result.exit_code)


@cli.command()
@click.argument("account")
@click.option(
    "--flow",
    type=click.Choice(["device", "loopback"]),
    help="Device code (a URL and a code to type; Microsoft's default) or a browser "
    "redirect to 127.0.0.1 (Google's default).",
)
@click.option("--no-browser", is_flag=True, help="Print the sign-in URL; do not open a browser.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    help="The loopback flow's port on 127.0.0.1 [default: any free port].",
)
@pass_state
def auth(state: _State, account: str, flow: str | None, no_browser: bool, port: int) -> None:
    """Authorise an OAuth2 account once and store its refresh token (see the README)."""
    import time

    from .oauth import authorize, token_store_path

    config = state.config()
    target = config.account(account)
    if target.auth != "oauth2":
        raise click.UsageError(f'account {account!r} has auth = "password": nothing to authorise')
    info = authorize(
        target,
        config.database.path,
        flow=flow,  # type: ignore[arg-type]  # click.Choice guarantees the Literal
        echo=lambda text: click.echo(text, err=False),
        open_browser=not no_browser,
        port=port,
    )
    until = (
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info.expires_at))
        if info.expires_at
        else "?"
    )
    click.echo(
        f"authorised account {account!r} (scope: {info.scope or 'not stated'}; access token "
        f"valid until {until}); tokens stored in "
        f"{token_store_path(config.database.path, account)}.\n"
        "A running daemon picks this up at its next reload: systemctl reload inbound-mail"
    )


@cli.command()
@click.option("--account", required=True, help="The account's name in the config.")
@click.option(
    "--folder",
    "folders",
    multiple=True,
    help="A folder to read (repeatable) [default: the account's].",
)
@click.option("--all-folders", is_flag=True, help="Every selectable folder of the account.")
@click.option("--since", help="Only mail whose Date header is on or after this day (YYYY-MM-DD).")
@click.option("--before", help="Only mail whose Date header is before this day (YYYY-MM-DD).")
@click.option("--dry-run", is_flag=True, help="Fetch and parse, store nothing.")
@click.option(
    "--apply-after", is_flag=True, help="Also apply the account's `after` action to stored mail."
)
@click.option(
    "--no-deliver", is_flag=True, help="Store only; queue nothing for the configured sinks."
)
@click.option(
    "--workers",
    type=click.IntRange(0, 64),
    default=None,
    help="Parse processes (0: one per core, at most 4; 1: no pool) [default: [parse] workers].",
)
@pass_state
def backfill(
    state: _State,
    account: str,
    folders: tuple[str, ...],
    all_folders: bool,
    since: str | None,
    before: str | None,
    dry_run: bool,
    apply_after: bool,
    no_deliver: bool,
    workers: int | None,
) -> None:
    """Read old mail from IMAP folders; interruptible, a rerun continues and duplicates nothing."""
    from .sources.imap.backfill import BackfillRequest, run_backfill

    if folders and all_folders:
        raise click.UsageError("--folder and --all-folders exclude each other")
    request = BackfillRequest(
        account,
        folders,
        all_folders,
        _date(since),
        _date(before),
        dry_run,
        apply_after,
        deliver=not no_deliver,
        workers=workers,
    )
    with click.progressbar(
        length=0,
        label="backfill",
        file=sys.stderr,
        show_eta=True,
        show_pos=True,
        hidden=not sys.stderr.isatty(),
    ) as bar:

        def found(folder: str, count: int) -> None:
            bar.length = (bar.length or 0) + count

        totals = run_backfill(
            state.config(), request, on_found=found, on_batch=lambda f, r: bar.update(r.read)
        )
    for folder, tally in totals.items():
        counts = tally.as_dict(deferred_hint="left in the folder: run backfill again later")
        _summary(f"{folder}{' (dry run)' if dry_run else ''}", counts)


# -- what is stored ---------------------------------------------------------------
@cli.command()
@click.option("--since", help="Received on or after (YYYY-MM-DD or an ISO-8601 instant).")
@click.option("--until", help="Received before (YYYY-MM-DD or an ISO-8601 instant).")
@click.option("--originator")
@click.option("--destination")
@click.option("--limit", type=click.IntRange(min=1))
@format_option
@raw_option
@pass_state
def messages(
    state: _State,
    since: str | None,
    until: str | None,
    originator: str | None,
    destination: str | None,
    limit: int | None,
    fmt: str,
    raw: bool,
) -> None:
    """List stored SMS, oldest first."""
    from .store.db import Store

    with Store.open_readonly(state.config().database.path) as store:
        rows = store.messages(
            since=since, until=until, originator=originator, destination=destination, limit=limit
        )
        write_rows(rows, fmt, sys.stdout, columns=MESSAGE_COLUMNS, raw=raw)


def _reject_codes(
    _ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    """``--code a --code b,c`` as ``("a", "b", "c")``; a code ``models`` does not know is
    a usage error that lists the valid ones."""
    codes = tuple(code.strip() for value in values for code in value.split(",") if code.strip())
    unknown = [code for code in codes if code not in REJECT_CODES]
    if unknown:
        raise click.BadParameter(
            f"unknown reject code {', '.join(map(repr, unknown))}; "
            f"valid codes: {', '.join(REJECT_CODES)}",
            param=param,
        )
    return codes


@cli.command()
@click.option("--show", "show_id", type=int, help="Print one reject's reason and raw email.")
@click.option(
    "--release",
    "release_id",
    type=int,
    help="Accept one reject after looking at it: store and deliver its SMS, once.",
)
@click.option(
    "--code",
    "codes",
    multiple=True,
    callback=_reject_codes,
    metavar="CODE",
    help="Only rejects with this code (repeatable, or a comma list): "
    + ", ".join(REJECT_CODES)
    + ".",
)
@click.option("--limit", type=click.IntRange(min=1))
@format_option
@raw_option
@pass_state
def rejects(
    state: _State,
    show_id: int | None,
    release_id: int | None,
    codes: tuple[str, ...],
    limit: int | None,
    fmt: str,
    raw: bool,
) -> None:
    """List emails from the provider that could not be parsed or authenticated, with the
    reason.

    ``--show`` writes the raw email exactly to a pipe or file; on a terminal its
    control characters are shown escaped, unless ``--raw``."""
    from .store.db import Store

    if release_id is not None:
        from .sources.importer import release_reject

        config = state.config()
        with Store.open(config.database.path) as store:
            released = release_reject(config, store, release_id)
        if released.already_released_at:
            click.echo(
                f"reject {release_id} was already released at {released.already_released_at} "
                f"(SMS {released.sms_id}); nothing done"
            )
        else:
            what = "stored and queued for the sinks" if released.stored else "already stored"
            click.echo(f"reject {release_id} released: SMS {released.sms_id} {what}")
        return
    with Store.open_readonly(state.config().database.path) as store:
        if show_id is None:
            rows = store.rejects(limit=limit, codes=codes)
            write_rows(rows, fmt, sys.stdout, columns=REJECT_COLUMNS, raw=raw)
            return
        reject = store.get_reject(show_id)
    if reject is None:
        raise click.ClickException(f"no reject with id {show_id}")
    head = f"code: {reject['code']}\nreason: {reject['reason']}\norigin: {reject['origin']}\n"
    if reject["evidence"]:
        head += "evidence:\n  " + reject["evidence"].replace("\n", "\n  ") + "\n"
    if reject["released_at"]:
        head += f"released: {reject['released_at']} (SMS {reject['released_sms_id']})\n"
    if raw or not is_terminal(sys.stdout):
        click.echo(head)
        sys.stdout.flush()
        sys.stdout.buffer.write(reject["raw"])
        return
    text = bytes(reject["raw"]).decode("utf-8", "backslashreplace").replace("\r\n", "\n")
    click.echo(escape_control(head, keep="\n"))
    click.echo(escape_control(text, keep="\n\t"), nl=False)


# -- deliveries -------------------------------------------------------------------
@cli.command()
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(["pending", "failed", "dead", "delivered"]),
    help="pending: not tried yet; failed: failed, retried at next_attempt_at (repeatable).",
)
@click.option("--sink")
@click.option("--limit", type=click.IntRange(min=1))
@format_option
@raw_option
@pass_state
def deliveries(
    state: _State,
    statuses: tuple[str, ...],
    sink: str | None,
    limit: int | None,
    fmt: str,
    raw: bool,
) -> None:
    """List the outbox: what is owed to which sink, and why it failed."""
    from .store.db import Store

    with Store.open_readonly(state.config().database.path) as store:
        write_rows(
            store.deliveries(status=statuses or None, sink=sink, limit=limit),
            fmt,
            sys.stdout,
            columns=DELIVERY_COLUMNS,
            raw=raw,
        )


@cli.command()
@click.option("--sink", required=True)
@click.option("--since", help="Only SMS received on or after (YYYY-MM-DD or ISO-8601).")
@click.option("--id", "sms_id", help="Only this SMS id.")
@pass_state
def replay(state: _State, sink: str, since: str | None, sms_id: str | None) -> None:
    """Queue stored SMS for SINK again (the running daemon sends them)."""
    from .store.db import Store

    config = state.config()
    config.sink(sink)
    with Store.open(config.database.path) as store:
        count = store.requeue(sink, since=since, message_id=sms_id)
    click.echo(f"queued {count} deliveries for {sink}", err=True)


@cli.command("retry-dead")
@click.option("--sink")
@pass_state
def retry_dead(state: _State, sink: str | None) -> None:
    """Give dead deliveries a fresh set of attempts."""
    from .store.db import Store

    config = state.config()
    if sink:
        config.sink(sink)
    with Store.open(config.database.path) as store:
        count = store.retry_dead(sink)
    click.echo(f"requeued {_count(count, 'dead delivery', 'dead deliveries')}", err=True)


@cli.command()
@click.argument("sink_names", metavar="[SINK]...", nargs=-1)
@click.option("--all", "all_sinks", is_flag=True, help="Every configured sink.")
@click.option("--dead", is_flag=True, help="Dead deliveries too, with a fresh set of attempts.")
@pass_state
def retry(state: _State, sink_names: tuple[str, ...], all_sinks: bool, dead: bool) -> None:
    """Make the pending and failed deliveries of SINK due now (after an outage).

    The running daemon sends them within a second; attempts already made still count
    (use --dead for rows that were given up on)."""
    from .store.db import Store

    if bool(sink_names) == all_sinks:
        raise click.UsageError("name one or more sinks, or give --all")
    config = state.config()
    names = [s.name for s in config.sinks] if all_sinks else list(dict.fromkeys(sink_names))
    for name in names:
        config.sink(name)  # an unknown name is an error that lists the configured ones
    with Store.open(config.database.path) as store:
        for name in names:
            done = store.retry_now(name, dead=dead)
            revived = f" ({done.revived} of them dead before)" if dead else ""
            click.echo(f"{name}: {_count(done.due, 'delivery', 'deliveries')} due now{revived}",
                       err=True)  # fmt: skip


@cli.command()
@pass_state
def sinks(state: _State) -> None:
    """The installed sink types, the configured sinks and their backlog."""
    from .sinks import available_sink_types
    from .store.db import Store

    config = state.config()
    click.echo("types: " + ", ".join(available_sink_types()))
    backlog: dict[str, dict[str, int]] = {}
    if config.database.path.exists():  # before the first run: no backlog, and no new file
        with Store.open_readonly(config.database.path) as store:
            backlog = store.backlog()
    rows = []
    for s in config.sinks:
        counts = backlog.get(s.name, {})
        # The words of `deliveries --status`: pending = not tried yet, failed = retrying.
        pending = counts.get("pending", 0) - counts.get("failed", 0)
        rows.append({"name": s.name, "type": s.type, **counts, "pending": pending})
    write_rows(
        rows,
        "table",
        sys.stdout,
        columns=("name", "type", "pending", "failed", "dead", "delivered"),
    )


# -- running as a service ----------------------------------------------------------------
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
@pass_state
def status(state: _State, as_json: bool) -> None:
    """Health from the database and the daemon's heartbeat.

    Exit status (Nagios): 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (the config or the database
    cannot be read); each problem is one line saying what to fix."""
    from .service.status import collect_status, unknown_status

    try:
        config = state.config()
    except InboundMailError as exc:  # Nagios: a check that cannot run is UNKNOWN, not WARNING
        report = unknown_status("config", str(exc))
    else:
        report = collect_status(config)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else "\n".join(report.lines()))
    sys.exit(report.exit_code)


@cli.command()
@click.option("--send-test", is_flag=True, help="Also deliver one test SMS to every sink.")
@pass_state
def check(state: _State, send_test: bool) -> None:
    """Validate the config, then try every account (DNS, TCP, TLS, login, folders) and sink.

    Nothing is sent to a sink without --send-test.  Exit status 1 if any step failed."""
    from .check.accounts import run_checks

    report = run_checks(
        state.config(), send_test=send_test, on_line=lambda line: click.echo(line.line())
    )
    sys.exit(report.exit_code)


@cli.command("systemd-unit")
@pass_state
def systemd_unit(state: _State) -> None:
    """Print a hardened systemd unit for this installation (see "Install as a service")."""
    from .service.systemd import unit_for_installation

    unit, warnings = unit_for_installation(state.config_path)
    click.echo(unit, nl=False)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)


def main() -> None:
    cli(prog_name="inbound-mail")
