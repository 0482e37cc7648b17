"""The private Dovecot harness: every helper does what the other tests rely on."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import imapclient
import pytest
from imapclient.exceptions import IMAPClientAbortError

from inbound_mail.testing.wait import wait_until
from testsupport.dovecot import DovecotError, DovecotFactory, DovecotServer
from testsupport.mailbox import Mailbox, MailServer

from helpers import run_unprivileged


def _raw(n: int) -> bytes:
    return (
        b"From: sender@example.com\r\nTo: sms@example.com\r\n"
        b"Subject: message %d\r\nMessage-ID: <%d@harness.test>\r\n\r\nbody %d\r\n" % (n, n, n)
    )


def _group_members(pgid: int) -> dict[int, str]:
    """pid -> state of every process in the group, read from /proc (zombies included)."""
    members = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        state, _ppid, group = text[text.rindex(")") + 2 :].split()[:3]
        if int(group) == pgid:
            members[int(entry.name)] = state
    return members


def _idle_client(server: MailServer, user: str) -> imapclient.IMAPClient:
    client = imapclient.IMAPClient(server.host, server.imap_port, ssl=False, timeout=10)
    client.login(user, server.password(user))
    client.select_folder("INBOX")
    client.idle()
    return client


def _closed_or_bye(client: imapclient.IMAPClient) -> str:
    """What an IDLEing client hears within 10 s: "bye", "closed" or "nothing"."""
    try:
        responses = client.idle_check(timeout=10)
    except (IMAPClientAbortError, OSError):
        return "closed"
    if any(response[0] == b"BYE" for response in responses):
        return "bye"
    if responses:
        return f"other: {responses!r}"
    # idle_check() swallows an EOF and returns []: ask the socket itself.
    sock = client.socket()
    sock.settimeout(0.5)
    try:
        return "closed" if sock.recv(1) == b"" else "data"
    except TimeoutError:
        return "nothing"
    except OSError:
        return "closed"


def test_starts_on_its_own_config_with_a_trusted_certificate(
    fresh_dovecot: DovecotFactory,
) -> None:
    server = fresh_dovecot()

    config = server.config_path.read_text()
    assert "/etc/dovecot" not in config
    assert "!include" not in config
    context = ssl.create_default_context(cafile=server.ca_file)
    for name in ("localhost", "127.0.0.1"):
        with (
            socket.create_connection((server.host, server.imaps_port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=name) as tls,
        ):
            assert tls.recv(4096).startswith(b"* OK")


def test_append_returns_increasing_uids_and_keeps_flags(mailbox: Mailbox) -> None:
    first = mailbox.append(_raw(1))
    second = mailbox.append(_raw(2), flags=["\\Seen", "\\Flagged"])

    assert second > first
    assert mailbox.uids() == [first, second]
    assert mailbox.flags() == {first: frozenset(), second: {"\\Seen", "\\Flagged"}}
    assert mailbox.message_count() == 2


def test_append_creates_a_missing_folder(mailbox: Mailbox) -> None:
    uid = mailbox.append(_raw(1), folder="Archive")

    assert mailbox.uids("Archive") == [uid]
    assert mailbox.message_count() == 0


def test_deliver_files_bulk_loads_1000_messages(mailbox: Mailbox) -> None:
    mailbox.deliver_files(_raw(n) for n in range(1000))
    uids = mailbox.uids()
    assert len(uids) == 1000
    with mailbox.server.session(mailbox.user) as client:
        client.select_folder("INBOX", readonly=True)
        bodies = client.fetch([uids[0], uids[-1]], ["BODY.PEEK[]"])
    assert bodies[uids[0]][b"BODY[]"] == _raw(0)
    assert bodies[uids[-1]][b"BODY[]"] == _raw(999)


def test_deliver_files_into_another_folder_and_after_appends(mailbox: Mailbox) -> None:
    appended = mailbox.append(_raw(0))
    mailbox.deliver_files([_raw(1), _raw(2)])
    mailbox.deliver_files([_raw(3)], folder="Other")

    assert mailbox.uids()[0] == appended
    assert mailbox.message_count() == 3
    assert mailbox.message_count("Other") == 1


def test_kick_makes_an_idling_client_see_bye_or_a_close(mailbox: Mailbox) -> None:
    client = _idle_client(mailbox.server, mailbox.user)
    try:
        mailbox.kick()
        assert _closed_or_bye(client) in {"bye", "closed"}
    finally:
        client.shutdown()


def test_kick_without_sessions_is_harmless(mailbox: Mailbox) -> None:
    mailbox.kick()


def test_set_uidvalidity_is_visible_in_select(mailbox: Mailbox) -> None:
    mailbox.append(_raw(1))
    with mailbox.server.session(mailbox.user) as client:
        before = client.select_folder("INBOX")[b"UIDVALIDITY"]

    mailbox.set_uidvalidity(before + 1000)

    with mailbox.server.session(mailbox.user) as client:
        assert client.select_folder("INBOX")[b"UIDVALIDITY"] == before + 1000


def test_idle_false_hides_idle(fresh_dovecot: DovecotFactory, dovecot: DovecotServer) -> None:
    quiet = fresh_dovecot(idle=False)

    with quiet.session("sms") as client:
        assert b"IDLE" not in client.capabilities()
        assert b"MOVE" in client.capabilities()
    with dovecot.session("sms") as client:
        assert b"IDLE" in client.capabilities()


def test_users_added_at_runtime_can_log_in(dovecot: DovecotServer) -> None:
    dovecot.add_user("late-user", "late-password")

    with dovecot.session("late-user") as client:
        assert client.select_folder("INBOX")[b"EXISTS"] == 0


def test_stop_says_bye_and_leaves_no_process(fresh_dovecot: DovecotFactory) -> None:
    server = fresh_dovecot()
    client = _idle_client(server, "sms")
    pgid = server.pid
    assert pgid is not None
    before = _group_members(pgid)
    assert len(before) >= 4  # master, log, auth, ... and the IDLEing imap process

    server.stop()

    still_running = {pid: state for pid, state in _group_members(pgid).items() if state != "Z"}
    assert still_running == {}
    assert not server.running
    assert _closed_or_bye(client) == "bye"
    client.shutdown()


def test_kill_drops_clients_and_start_keeps_ports_and_mail(fresh_dovecot: DovecotFactory) -> None:
    server = fresh_dovecot()
    uid = server.append("sms", "INBOX", _raw(1))
    ports = (server.imap_port, server.imaps_port)
    client = _idle_client(server, "sms")
    pgid = server.pid
    assert pgid is not None

    server.kill()

    assert _closed_or_bye(client) == "closed"
    assert all(state == "Z" for state in _group_members(pgid).values())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((server.host, server.imap_port), timeout=5)
    server.start()
    assert (server.imap_port, server.imaps_port) == ports
    assert server.folder_uids("sms") == [uid]


def test_restart_serves_again_on_the_same_ports(fresh_dovecot: DovecotFactory) -> None:
    server = fresh_dovecot()
    port = server.imap_port

    server.restart()

    assert server.imap_port == port
    assert server.message_count("sms") == 0


def test_a_bad_config_fails_with_the_dovecot_log(tmp_path: Path) -> None:
    server = DovecotServer(tmp_path, extra_conf="no_such_setting = 1\n")

    with pytest.raises(DovecotError, match="no_such_setting"):
        server.start()
    assert not server.running
    server.close()


def test_a_missing_imap_server_names_its_package(tmp_path: Path) -> None:
    server = DovecotServer(tmp_path)
    server.imap_binary = tmp_path / "no-imap"
    with pytest.raises(DovecotError, match=r"no-imap is not installed.*dovecot-imapd"):
        server.start()
    assert not server.running


def test_close_removes_the_private_directory(fresh_dovecot: DovecotFactory) -> None:
    server = fresh_dovecot()
    runtime = server.runtime_dir
    assert runtime is not None and (runtime / "mail").is_dir()

    server.close()

    wait_until(lambda: not runtime.exists(), timeout=5)


def test_account_points_at_the_server_with_a_private_password_file(mailbox: Mailbox) -> None:
    account = mailbox.account()
    plain = mailbox.account(tls="starttls", name="other")

    assert (account.host, account.port, account.tls) == (
        "127.0.0.1",
        mailbox.server.imaps_port,
        "implicit",
    )
    assert account.ca_file == mailbox.server.ca_file
    assert account.password_file is not None
    assert account.password_file.stat().st_mode & 0o777 == 0o600
    assert account.password_file.read_text() == mailbox.password + "\n"
    assert (plain.name, plain.port) == ("other", mailbox.server.imap_port)


_UNPRIVILEGED_SCRIPT = """
import sys
from pathlib import Path
from testsupport.dovecot import DovecotServer

with DovecotServer(Path(sys.argv[1])) as server:
    uid = server.append("sms", "INBOX", b"Subject: one\\r\\n\\r\\nbody\\r\\n")
    server.deliver_files("sms", "INBOX", [b"Subject: more\\r\\n\\r\\nbody\\r\\n"] * 5)
    server.kick("sms")
    print(uid, server.message_count("sms"))
"""


def test_runs_as_an_unprivileged_user(tmp_path: Path) -> None:
    result = run_unprivileged(_UNPRIVILEGED_SCRIPT, tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "6"]
