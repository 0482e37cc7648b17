"""``inbound-mail check``: try every part of the set-up, one line per step.

The config has already been validated by loading it.  Then, for each account:
the password, DNS, TCP, TLS (the certificate's subject and expiry), the login,
the server's IDLE / MOVE / UIDPLUS capabilities, the folders (each configured
name shown with the server's name for it, resolved through NAMESPACE), the
``after = "move:..."`` target (created when missing; FAIL when the server
refuses), how many provider emails wait above the checkpoint, and what the
latest provider emails would get from the authenticity check (DKIM with d=,
Authentication-Results found and trusted or not, and whether ``require`` would
accept them).  For each sink: its options, then whether it can be reached -- a
webhook's host over TCP (and TLS for https), a jsonl file's directory, a
command's program -- without sending anything unless ``send_test`` is set.

Each line is ``ok``, ``warn`` (worth knowing, not a failure) or ``FAIL``; a
FAIL says what to fix, and makes the report's exit code 1.  The sink checks
live in :mod:`.sinks`, the line types in :mod:`.lines`.
"""

from __future__ import annotations

import imaplib
import socket
import ssl
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import closing, suppress
from typing import Any

from imapclient import IMAPClient

from ..config.model import AccountConfig, Config
from ..errors import ImapError, ImapTlsError, InboundMailError
from ..models import SmsRecord
from ..oauth import TokenInfo, TokenSource
from ..secrets import exposed_secrets_warning, read_password
from ..sources.imap.connection import (
    capabilities,
    imap_errors,
    login,
    oauth_login,
    open_session,
    server_text,
    tls_context,
    untrusted_certificate,
)
from ..sources.imap.namespace import FolderNames, folder_names
from ..sources.imap.oauth import choose_mechanism
from ..sources.imap.search import senders_criteria
from ..store.db import Store
from .lines import CheckLevel, CheckLine, CheckReport, LineMaker, reason
from .sinks import check_sink, sink_config_error

__all__ = ["run_checks"]

CERT_WARN_DAYS = 14


def run_checks(
    config: Config, *, send_test: bool = False, on_line: Callable[[CheckLine], None] | None = None
) -> CheckReport:
    """Check every account and sink of ``config``; ``on_line`` sees each line as it comes."""
    report = CheckReport()
    for line in _all_lines(config, send_test):
        report.lines.append(line)
        if on_line is not None:
            on_line(line)
    return report


def _all_lines(config: Config, send_test: bool) -> Iterator[CheckLine]:
    where = str(config.path) if config.path else "built-in defaults (no config file)"
    counts = f"{_count(len(config.accounts), 'account')}, {_count(len(config.sinks), 'sink')}"
    # A sink's options are config too: a typo there makes the config invalid, as `run` says.
    invalid = {sink.name: sink_config_error(sink) for sink in config.sinks}
    problems = {name: error for name, error in invalid.items() if error is not None}
    if problems:
        for error in problems.values():
            yield CheckLine("FAIL", "config", "invalid", str(error))
    else:
        yield CheckLine("ok", "config", "valid", f"{where}: {counts}")
    exposed = exposed_secrets_warning(config)
    if exposed is not None:
        yield CheckLine("warn", "config", "permissions", exposed)
    if not config.accounts:
        yield CheckLine(
            "FAIL", "config", "accounts", "no [[accounts]]: the daemon would read no mailbox"
        )
    if not config.sinks:
        yield CheckLine(
            "warn", "config", "sinks", "no [[sinks]]: SMS are stored, delivered nowhere"
        )
    for account in config.accounts:
        yield from _check_account(account, config)
    for sink in config.sinks:
        if sink.name not in problems:
            yield from check_sink(sink, send_test)


# -- accounts ----------------------------------------------------------------------------
def _check_account(account: AccountConfig, config: Config) -> Iterator[CheckLine]:
    subject = f"account {account.name}"

    def line(level: CheckLevel, step: str, detail: str) -> CheckLine:
        return CheckLine(level, subject, step, detail)

    password = token = ""
    if account.auth == "oauth2":
        tokens = TokenSource(account, config.database.path)
        try:
            token = tokens.access_token()
        except InboundMailError as exc:
            yield line("FAIL", "token", str(exc))
            return
        yield line("ok", "token", _token_detail(tokens.info()))
    else:
        try:
            password = read_password(account)
        except InboundMailError as exc:
            yield line("FAIL", "password", str(exc))
            return
        yield line("ok", "password", "read")
    if not (yield from _network(account, line)):
        return
    try:
        client = open_session(account)
    except InboundMailError as exc:
        yield line("FAIL", "TLS" if isinstance(exc, ImapTlsError) else "connect", _reason(exc))
        return
    # Protocol order: STARTTLS (and its certificate) comes before the login.
    if account.tls == "starttls":
        yield _certificate_line(client.socket(), account, line)
    try:
        if account.auth == "oauth2":
            oauth_login(client, account, choose_mechanism(account, capabilities(client)), token)
        else:
            login(client, account, password)
    except InboundMailError as exc:
        yield line("FAIL", "TLS" if isinstance(exc, ImapTlsError) else "login", _reason(exc))
        return
    yield line("ok", "login", f"logged in as {account.username}")
    try:
        with imap_errors(account):
            yield from _capability_lines(client, account, line)
            yield from _folder_lines(client, account, config, line)
    except InboundMailError as exc:
        yield line("FAIL", "session", _reason(exc))
    finally:
        with suppress(Exception):  # the check is over; a dead connection has nothing to say
            client.logout()


def _token_detail(info: TokenInfo) -> str:
    """``valid until 2026-11-29 18:00:00 UTC; scope: ...; refresh token stored``."""
    parts = []
    if info.expires_at is not None:
        until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info.expires_at))
        parts.append(f"access token valid until {until}")
    parts.append(f"scope granted: {info.scope}" if info.scope else "scope granted: not stated")
    parts.append("refresh token stored" if info.refresh_token else "no refresh token (app-only)")
    return "; ".join(parts)


def _network(account: AccountConfig, line: LineMaker) -> Generator[CheckLine, None, bool]:
    """DNS, TCP, then for implicit TLS the handshake; False when the rest cannot follow."""
    where = f"{account.host}:{account.port}"
    try:
        infos = socket.getaddrinfo(account.host, account.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        yield line(
            "FAIL",
            "DNS",
            f"cannot resolve {account.host} ({exc.strerror}): check {account.key('host')}",
        )
        return False
    yield line(
        "ok", "DNS", f"{account.host} is {', '.join(sorted({str(i[4][0]) for i in infos})[:4])}"
    )
    try:
        sock = socket.create_connection(
            (account.host, account.port), timeout=account.connect_timeout
        )
    except OSError as exc:
        yield line(
            "FAIL",
            "TCP",
            f"cannot connect to {where} ({reason(exc)}): check "
            f"{account.key('port')}, the server and any firewall",
        )
        return False
    with closing(sock):
        yield line("ok", "TCP", f"connected to {where}")
        if account.tls == "none":
            yield line(
                "warn", "TLS", 'off (tls = "none"): the password crosses the network in clear text'
            )
        elif account.tls == "implicit":
            return (yield from _handshake(sock, account, line))
        return (yield from _greeting(sock, account, line))
    return True


def _greeting(
    sock: socket.socket, account: AccountConfig, line: LineMaker
) -> Generator[CheckLine, None, bool]:
    """A plain-text session must start with the server's ``* OK``; a TLS port stays silent."""
    try:
        greeting = sock.makefile("rb").readline(200)
    except OSError as exc:
        got = reason(exc)
    else:
        if greeting.startswith((b"* OK", b"* PREAUTH")):
            return True
        text = "".join(c if c.isprintable() else "?" for c in greeting[:60].decode("latin-1"))
        got = f"it sent {text.strip()!r}" if text.strip() else "it sent nothing"
    yield line(
        "FAIL",
        "TLS",
        f"no IMAP greeting from {account.host}:{account.port} "
        f'({got}): a TLS-only port? use tls = "implicit" there, or the '
        f"server's STARTTLS port (usually 143); see {account.key('tls')}",
    )
    return False


def _handshake(
    sock: socket.socket, account: AccountConfig, line: LineMaker
) -> Generator[CheckLine, None, bool]:
    where = f"{account.host}:{account.port}"
    try:
        context = tls_context(account)
        with context.wrap_socket(sock, server_hostname=account.host) as tls_sock:
            yield _certificate_line(tls_sock, account, line)
    except ssl.SSLCertVerificationError as exc:
        yield line("FAIL", "TLS", untrusted_certificate(exc, account))
        return False
    except (OSError, InboundMailError) as exc:
        yield line(
            "FAIL",
            "TLS",
            f"handshake with {where} failed ({reason(exc)}): is it a TLS port? "
            f"see {account.key('tls')}",
        )
        return False
    return True


def _certificate_line(sock: Any, account: AccountConfig, line: LineMaker) -> CheckLine:
    cert = sock.getpeercert() if isinstance(sock, ssl.SSLSocket) else None
    if not cert:
        return line("warn", "TLS", "no certificate details available")
    subject, issuer = _name(cert.get("subject", ())), _name(cert.get("issuer", ()))
    not_after = str(cert.get("notAfter", ""))
    days = int((ssl.cert_time_to_seconds(not_after) - time.time()) // 86400)
    text = (
        f"{sock.version()}, certificate {subject} by {issuer}, expires {not_after} (in {days} days)"
    )
    if days < CERT_WARN_DAYS:
        return line("FAIL", "TLS", f"{text}: renew the certificate of {account.host}")
    return line("ok", "TLS", text)


def _capability_lines(
    client: IMAPClient, account: AccountConfig, line: LineMaker
) -> Iterator[CheckLine]:
    caps = capabilities(client)
    found = ", ".join(
        f"{cap} {'yes' if cap in caps else 'no'}" for cap in ("IDLE", "MOVE", "UIDPLUS")
    )
    yield line("ok", "capabilities", found)
    if account.idle and "IDLE" not in caps:
        yield line(
            "warn",
            "capabilities",
            f"no IDLE: the daemon polls every {account.poll_interval:g}s, "
            "so an SMS may wait that long",
        )
    if account.after.startswith("move:") and "MOVE" not in caps:
        yield line("warn", "capabilities", "no MOVE: mail is moved with COPY, then deleted")
    if account.after in ("delete",) and "UIDPLUS" not in caps:
        yield line(
            "warn",
            "capabilities",
            "no UIDPLUS: deleted mail stays flagged \\Deleted until another client expunges it",
        )


def _folder_lines(
    client: IMAPClient, account: AccountConfig, config: Config, line: LineMaker
) -> Iterator[CheckLine]:
    names = folder_names(client)
    for folder in account.folders:
        resolved = names.resolve(folder)
        if not client.folder_exists(resolved):
            named = "" if resolved == folder else f" (the server's name for it: {resolved!r})"
            yield line(
                "FAIL",
                "folders",
                f"{folder!r} does not exist ({_existing_folders(client)}): create it, "
                f"or fix {account.key('folders')}{named}",
            )
            continue
        waiting = _waiting(client, account, config, resolved)
        shown = names.describe(folder)
        yield line("ok", "folders", f"{shown}: {waiting} provider emails wait to be read")
        yield from _trust_lines(client, account, config, resolved, line)
    if account.after.startswith("move:"):
        yield _after_target_line(client, account, names, line)


def _after_target_line(
    client: IMAPClient, account: AccountConfig, names: FolderNames, line: LineMaker
) -> CheckLine:
    """The ``move:`` target exists, or is created now as the first move would; else FAIL."""
    name = account.after.removeprefix("move:")
    target, shown = names.resolve(name), names.describe(name)
    if client.folder_exists(target):
        return line("ok", "after", f"move to {shown}: the folder exists")
    try:
        client.create_folder(target)
    except imaplib.IMAP4.abort:
        raise
    except imaplib.IMAP4.error as exc:
        return line(
            "FAIL",
            "after",
            f"move to {shown}: the folder does not exist and the server refuses to create "
            f"it ({server_text(exc)}): create it, or fix {account.key('after')}",
        )
    return line("ok", "after", f"move to {shown}: the folder did not exist, created it")


def _waiting(client: IMAPClient, account: AccountConfig, config: Config, folder: str) -> int:
    """Provider emails above the daemon's checkpoint: what its next pass reads."""
    selected = client.select_folder(folder, readonly=True)
    uidvalidity = int(selected[b"UIDVALIDITY"])
    last = 0
    if config.database.path.exists():
        with Store.open(config.database.path, raw_retention_days=None) as store:
            checkpoint = store.get_checkpoint(account.name, folder)
        if checkpoint is not None and checkpoint.uidvalidity == uidvalidity:
            last = checkpoint.last_uid
    criteria = senders_criteria(account.senders)
    if last:
        criteria = [*criteria, "UID", f"{last + 1}:*"]
    return len([uid for uid in client.search(criteria) if int(uid) > last])


MAX_FOLDERS_SHOWN = 20


def _existing_folders(client: IMAPClient) -> str:
    """What the server has instead: its folders (the first few) and, when the
    personal namespace has one, the prefix folder names need (``INBOX.``)."""
    names = sorted(str(name) for _flags, _delimiter, name in client.list_folders())
    shown = ", ".join(repr(name) for name in names[:MAX_FOLDERS_SHOWN])
    more = f" and {len(names) - MAX_FOLDERS_SHOWN} more" if len(names) > MAX_FOLDERS_SHOWN else ""
    text = f"the server has {shown or 'no folders'}{more}"
    if "NAMESPACE" in capabilities(client):
        personal = client.namespace().personal or ()
        prefix = str(personal[0][0]) if personal and personal[0][0] else ""
        if prefix:
            text += f"; its folders are named {prefix}NAME"
    return text


def _reason(exc: InboundMailError) -> str:
    """The error without the account's name: every line already starts with it."""
    return exc.reason if isinstance(exc, ImapError) and exc.reason else str(exc)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


TRUST_SAMPLE = 3  # the latest provider emails of each folder that `check` judges


def _trust_lines(
    client: IMAPClient, account: AccountConfig, config: Config, folder: str, line: LineMaker
) -> Iterator[CheckLine]:
    """What the latest provider emails would get from the authenticity check (the
    folder is selected read-only by :func:`_waiting`; nothing is marked)."""
    from ..config.model import ParseOptions
    from ..parse.authenticity import Verifier
    from ..parse.message import parse_email

    if account.authenticate == "off":
        yield line(
            "warn",
            "trust",
            f'authenticate = "off" ({account.key("authenticate")}): anyone can send an '
            "email that is stored and delivered as an SMS from the provider",
        )
        return
    uids = sorted(int(uid) for uid in client.search(senders_criteria(account.senders)))
    uids = uids[-TRUST_SAMPLE:]
    if not uids:
        yield line(
            "warn",
            "trust",
            f"no provider email in {folder!r} yet to judge: run check again once one "
            "arrived.  To trust your mail server's verdict, open a received email's "
            "headers: the Authentication-Results header at the top starts with your "
            "server's authserv-id (the word before the first ';'); put it in "
            f"{account.key('authserv_ids')}",
        )
        return
    verifier = Verifier.from_config(config.parse, account)
    options = ParseOptions.from_config(config.parse, account.senders)
    sizes = client.fetch(uids, ["RFC822.SIZE"])
    small = [u for u in uids if int(sizes.get(u, {}).get(b"RFC822.SIZE", 0)) <= account.max_size]
    fetched = client.fetch(small, ["BODY.PEEK[]"]) if small else {}
    for uid in small:
        raw = bytes(fetched.get(uid, {}).get(b"BODY[]", b""))
        outcome = parse_email(raw, options)
        if not isinstance(outcome, SmsRecord):
            yield line("ok", "trust", f"{folder!r} UID {uid}: not an SMS ({outcome.reason})")
            continue
        verdict = verifier.assess(raw, outcome.sender or "", full=True)
        said = "; ".join(verdict.evidence.splitlines())
        if verdict.temporary:
            yield line("warn", "trust", f"{folder!r} UID {uid}: DNS failed for now: {said}")
        elif verdict.authentic:
            yield line("ok", "trust", f"{folder!r} UID {uid}: require would accept it: {said}")
        else:
            level: CheckLevel = "FAIL" if account.authenticate == "require" else "warn"
            yield line(
                level,
                "trust",
                f"{folder!r} UID {uid}: require would REJECT it: {said}.  If it is real "
                f"provider mail, set {account.key('authserv_ids')} to your server's "
                "authserv-id, or check [parse] dns_servers",
            )


def _name(rdns: Any) -> str:
    """``CN=localhost`` (or the whole name) from getpeercert()'s nested tuples."""
    pairs = [pair for rdn in rdns for pair in rdn if isinstance(pair, tuple) and len(pair) == 2]
    common = [value for key, value in pairs if key == "commonName"]
    if common:
        return f"CN={common[0]}"
    return ", ".join(f"{key}={value}" for key, value in pairs) or "(no name)"
