"""The private Cyrus harness: it does what the contract tests rely on, in both layouts."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import imapclient
import pytest
from imapclient.exceptions import IMAPClientAbortError, LoginError

from inbound_mail.testing.wait import wait_until
from testsupport.cyrus import CyrusError, CyrusFactory, CyrusServer
from testsupport.mailbox import Mailbox

from helpers import run_unprivileged

LAYOUTS = pytest.mark.parametrize("imap_server", ["cyrus-debian", "cyrus-upstream"], indirect=True)


def _raw(n: int) -> bytes:
    return (
        b"From: sender@example.com\r\nTo: sms@example.com\r\n"
        b"Subject: message %d\r\nMessage-ID: <%d@harness.test>\r\n\r\nbody %d\r\n" % (n, n, n)
    )


def _client(mailbox: Mailbox, **kwargs: Any) -> imapclient.IMAPClient:
    server = mailbox.server
    client = imapclient.IMAPClient(server.host, server.imap_port, ssl=False, timeout=10, **kwargs)
    client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.login(mailbox.user, mailbox.password)
    return client


@LAYOUTS
def test_logs_in_over_implicit_tls_and_starttls_with_the_test_ca(mailbox: Mailbox) -> None:
    server = mailbox.server
    context = ssl.create_default_context(cafile=server.ca_file)
    implicit = imapclient.IMAPClient(
        server.host, server.imaps_port, ssl=True, ssl_context=context, timeout=10
    )
    implicit.login(mailbox.user, mailbox.password)
    assert implicit.select_folder("INBOX")[b"EXISTS"] == 0
    implicit.logout()

    upgraded = imapclient.IMAPClient(server.host, server.imap_port, ssl=False, timeout=10)
    assert b"STARTTLS" in upgraded.capabilities()
    upgraded.starttls(context)
    upgraded.login(mailbox.user, mailbox.password)
    assert {b"IDLE", b"MOVE", b"UIDPLUS", b"NAMESPACE"} <= set(upgraded.capabilities())
    upgraded.logout()

    with pytest.raises(LoginError):
        imapclient.IMAPClient(server.host, server.imap_port, ssl=False, timeout=10).login(
            mailbox.user, "not-the-password"
        )


@LAYOUTS
def test_idle_pushes_new_mail_at_once(mailbox: Mailbox) -> None:
    client = _client(mailbox)
    try:
        client.select_folder("INBOX")
        client.idle()
        uid = mailbox.append(_raw(1))
        # idled is running: the EXISTS comes now, not at Cyrus's 60 s polling fallback.
        responses = client.idle_check(timeout=20)
        client.idle_done()
    finally:
        client.logout()
    assert (1, b"EXISTS") in responses, responses
    assert mailbox.uids() == [uid]


@pytest.mark.parametrize(
    ("imap_server", "prefix", "archive", "others"),
    [
        ("cyrus-debian", "INBOX.", "INBOX.Archive", ["INBOX", "INBOX.Archive"]),
        ("cyrus-upstream", "", "Archive", ["Archive", "INBOX"]),
    ],
    indirect=["imap_server"],
)
def test_folder_names_follow_the_layout(
    mailbox: Mailbox, prefix: str, archive: str, others: list[str]
) -> None:
    assert mailbox.folder("Archive") == archive
    assert mailbox.folder("INBOX") == "INBOX"
    uid = mailbox.append(_raw(1), folder=mailbox.folder("Archive"))
    assert mailbox.folders() == others
    assert mailbox.uids(archive) == [uid]
    client = _client(mailbox)
    try:
        personal = client.namespace().personal
        assert personal[0][0] == prefix, personal
        if prefix:  # Debian's layout refuses a folder beside INBOX
            with pytest.raises(imapclient.exceptions.IMAPClientError, match="ermission"):
                client.create_folder("Processed")
    finally:
        client.logout()


@LAYOUTS
def test_append_keeps_flags_and_counts(mailbox: Mailbox) -> None:
    first = mailbox.append(_raw(1))
    second = mailbox.append(_raw(2), flags=["\\Seen", "\\Flagged"])
    mailbox.deliver_files([_raw(3), _raw(4)])
    assert mailbox.uids() == [first, second, second + 1, second + 2]
    assert mailbox.flags()[second] == {"\\Seen", "\\Flagged"}
    assert mailbox.flags()[first] == frozenset()
    assert mailbox.message_count() == 4


@LAYOUTS
def test_set_uidvalidity_gives_a_new_one_and_keeps_every_folder(mailbox: Mailbox) -> None:
    mailbox.append(_raw(1))
    mailbox.append(_raw(2), flags=["\\Seen"])
    mailbox.append(_raw(3), folder=mailbox.folder("Archive"))
    with mailbox.server.session(mailbox.user) as client:
        before = client.select_folder("INBOX", readonly=True)[b"UIDVALIDITY"]
    new = mailbox.set_uidvalidity(12345)
    with mailbox.server.session(mailbox.user) as client:
        after = client.select_folder("INBOX", readonly=True)[b"UIDVALIDITY"]
    assert after == new != before
    assert sorted(mailbox.flags().values(), key=len) == [frozenset(), {"\\Seen"}]
    assert mailbox.message_count(mailbox.folder("Archive")) == 1


@LAYOUTS
def test_kick_closes_an_idling_session(mailbox: Mailbox) -> None:
    client = _client(mailbox)
    client.select_folder("INBOX")
    client.idle()
    mailbox.kick()
    sock = client.socket()
    sock.settimeout(10)

    def closed() -> bool:
        try:
            data = sock.recv(4096)
        except (OSError, IMAPClientAbortError):
            return True
        return data == b"" or b"* BYE" in data

    assert wait_until(closed, 10)
    client.shutdown()
    mailbox.kick()  # nobody connected: harmless


def test_stop_leaves_no_process_and_start_keeps_ports_and_mail(fresh_cyrus: CyrusFactory) -> None:
    server: CyrusServer = fresh_cyrus(layout="upstream")
    mailbox = server.new_mailbox("restart")
    uid = mailbox.append(_raw(1))
    ports = (server.imap_port, server.imaps_port)
    pid = server.pid
    assert pid is not None
    server.stop()
    assert not server.running
    assert not Path(f"/proc/{pid}").exists()
    server.start()
    assert (server.imap_port, server.imaps_port) == ports
    assert mailbox.uids() == [uid]
    runtime = server.runtime_dir
    assert runtime is not None
    server.close()
    assert not runtime.exists()


def test_without_idle_the_server_offers_no_idled(fresh_cyrus: CyrusFactory) -> None:
    server: CyrusServer = fresh_cyrus(idle=False)
    assert server.runtime_dir is not None
    assert "idled" not in (server.runtime_dir / "cyrus.conf").read_text()
    assert server.new_mailbox("noidle").message_count() == 0


def test_missing_binaries_name_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INBOUND_MAIL_CYRUS_IMAPD", str(tmp_path / "nowhere"))
    server = CyrusServer(tmp_path / "server")
    with pytest.raises(CyrusError, match=r"imapd is missing.*ensure-deps\.sh.*never apt-get"):
        server.start()
    assert not server.running


def test_bad_layout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CyrusError, match="layout 'gmail'"):
        CyrusServer(tmp_path, layout="gmail")  # type: ignore[arg-type]  # a bad one, on purpose


_UNPRIVILEGED_SCRIPT = """
import sys
from pathlib import Path
from testsupport.cyrus import CyrusServer

with CyrusServer(Path(sys.argv[1]), layout="upstream") as server:
    uid = server.append("sms", "INBOX", b"Subject: one\\r\\n\\r\\nbody\\r\\n")
    server.deliver_files("sms", "INBOX", [b"Subject: more\\r\\n\\r\\nbody\\r\\n"] * 5)
    server.kick("sms")
    print(uid, server.message_count("sms"))
"""


def test_runs_as_an_unprivileged_user(tmp_path: Path) -> None:
    result = run_unprivileged(_UNPRIVILEGED_SCRIPT, tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "6"]
