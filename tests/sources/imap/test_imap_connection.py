"""connect(): TLS modes, certificate checks, login, keepalive and error translation,
against the real Dovecot."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from imapclient import IMAPClient

from inbound_mail.errors import ImapAuthError, ImapConnectionError, ImapError, ImapTlsError
from inbound_mail.logs import KeyValueFormatter
from inbound_mail.sources.imap.connection import TRANSLATION, capabilities, connect, imap_errors
from testsupport.dovecot import DovecotFactory
from testsupport.mailbox import Mailbox


@pytest.fixture
def closing() -> Iterator[list[IMAPClient]]:
    """Clients to log out after the test, whatever happens."""
    clients: list[IMAPClient] = []
    yield clients
    for client in clients:
        client.shutdown()


def _open(mailbox: Mailbox, closing: list[IMAPClient], **overrides: Any) -> IMAPClient:
    client = connect(mailbox.account(**overrides), mailbox.password)
    closing.append(client)
    return client


def _assert_verified_tls(client: IMAPClient) -> None:
    sock = client.socket()
    assert isinstance(sock, ssl.SSLSocket)
    assert sock.getpeercert()  # empty unless the certificate was verified


def test_implicit_tls_with_ca_file_logs_in(mailbox: Mailbox, closing: list[IMAPClient]) -> None:
    client = _open(mailbox, closing)

    _assert_verified_tls(client)
    assert client.select_folder("INBOX")[b"EXISTS"] == 0


def test_implicit_tls_without_ca_file_is_refused(mailbox: Mailbox) -> None:
    account = mailbox.account(ca_file=None, name="work")

    with pytest.raises(ImapTlsError) as caught:
        connect(account, mailbox.password)

    message = str(caught.value)
    assert caught.value.account == "work"
    assert "account 'work'" in message
    assert f"127.0.0.1:{account.port}" in message
    assert "not trusted" in message and "ca_file" in message
    assert "certificate" in message
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
    assert caught.value.__cause__.verify_message in message


def test_the_host_name_is_checked(fresh_dovecot: DovecotFactory, closing: list[IMAPClient]) -> None:
    # The certificate names 127.0.0.1 and localhost; the server also answers on 127.0.0.2.
    server = fresh_dovecot(
        extra_conf="service imap-login {\n inet_listener imaps {\n"
        "  address = 127.0.0.1, 127.0.0.2\n }\n}\n"
    )
    closing.append(connect(server.account("sms", host="localhost"), "secret"))

    with pytest.raises(ImapTlsError, match=r"is not valid for 127\.0\.0\.2") as caught:
        connect(server.account("sms", host="127.0.0.2"), "secret")
    # No ca_file fixes a certificate for other names: say which names it holds.
    assert "it names IP:127.0.0.1, DNS:localhost" in str(caught.value)
    assert "ca_file" not in str(caught.value)


def test_a_missing_ca_file_is_a_tls_error(mailbox: Mailbox) -> None:
    account = mailbox.account(ca_file=mailbox.server.root / "no-such-ca.pem")

    with pytest.raises(ImapTlsError, match=r"cannot load ca_file .*no-such-ca\.pem"):
        connect(account, mailbox.password)


def test_wrong_password_is_an_auth_error_naming_the_account(mailbox: Mailbox) -> None:
    account = mailbox.account(name="shop")
    wrong = "not-the-password-1234"

    with pytest.raises(ImapAuthError) as caught:
        connect(account, wrong)

    message = str(caught.value)
    assert caught.value.account == "shop"
    assert f"login refused for user {mailbox.user} at 127.0.0.1:{account.port}" in message
    assert "check username and password" in message
    assert wrong not in message and mailbox.password not in message


def test_starttls_upgrades_before_login(mailbox: Mailbox, closing: list[IMAPClient]) -> None:
    client = _open(mailbox, closing, tls="starttls")

    _assert_verified_tls(client)
    assert client.select_folder("INBOX")[b"EXISTS"] == 0


def test_starttls_checks_the_certificate(mailbox: Mailbox) -> None:
    with pytest.raises(ImapTlsError, match="not trusted"):
        connect(mailbox.account(tls="starttls", ca_file=None), mailbox.password)


def test_starttls_fails_closed_when_the_server_does_not_offer_it(
    fresh_dovecot: DovecotFactory,
) -> None:
    server = fresh_dovecot(extra_conf="ssl = no\n")
    account = server.account("sms", tls="starttls")

    with pytest.raises(ImapTlsError, match="does not offer STARTTLS") as caught:
        connect(account, "secret")

    assert caught.value.account == "sms"
    # Nothing was sent after the greeting: no login attempt reached the server.
    assert "Login:" not in server.log_path.read_text()
    assert "auth failed" not in server.log_path.read_text()


def test_tls_none_logs_in_and_warns_about_clear_text(
    mailbox: Mailbox, closing: list[IMAPClient], caplog: pytest.LogCaptureFixture
) -> None:
    log = logging.getLogger("tests.imap_connection")
    with caplog.at_level(logging.WARNING, logger=log.name):
        client = connect(mailbox.account(tls="none"), mailbox.password, log=log)
    closing.append(client)

    assert not isinstance(client.socket(), ssl.SSLSocket)
    assert client.select_folder("INBOX")[b"EXISTS"] == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    line = KeyValueFormatter(timestamps=False).format(warnings[0])
    assert "imap.cleartext" in line and "clear text" in line
    assert f"account={mailbox.user}" in line
    assert mailbox.password not in caplog.text


def test_implicit_and_starttls_do_not_warn(
    mailbox: Mailbox, closing: list[IMAPClient], caplog: pytest.LogCaptureFixture
) -> None:
    log = logging.getLogger("tests.imap_connection")
    with caplog.at_level(logging.DEBUG, logger=log.name):
        closing.append(connect(mailbox.account(), mailbox.password, log=log))
        closing.append(connect(mailbox.account(tls="starttls"), mailbox.password, log=log))

    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_refused_port_is_a_connection_error(mailbox: Mailbox) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there

    with pytest.raises(ImapConnectionError) as caught:
        connect(mailbox.account(port=port, name="down"), mailbox.password)

    assert f"cannot connect to 127.0.0.1:{port}" in str(caught.value)
    assert caught.value.account == "down"
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)


def test_a_silent_server_times_out_as_a_connection_error(mailbox: Mailbox) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel completes the handshake; no greeting ever comes
        account = mailbox.account(port=silent.getsockname()[1], connect_timeout=0.3)

        with pytest.raises(ImapConnectionError, match=r"timed out after 0\.3 s"):
            connect(account, mailbox.password)


def test_a_server_hanging_up_is_a_connection_error(mailbox: Mailbox) -> None:
    with socket.socket() as rude:
        rude.bind(("127.0.0.1", 0))
        rude.listen()

        def hang_up() -> None:
            conn, _ = rude.accept()
            conn.close()

        thread = threading.Thread(target=hang_up, daemon=True)
        thread.start()
        account = mailbox.account(port=rude.getsockname()[1], tls="none")
        with pytest.raises(ImapConnectionError, match="cannot connect to"):
            connect(account, mailbox.password)
        thread.join(5)


def test_tcp_keepalive_is_on(mailbox: Mailbox, closing: list[IMAPClient]) -> None:
    for tls in ("implicit", "starttls"):
        sock = _open(mailbox, closing, tls=tls).socket()

        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 10
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3


def test_tcp_nodelay_is_on(mailbox: Mailbox, closing: list[IMAPClient]) -> None:
    # imapclient sends a command and its CRLF in two writes: with Nagle on, the
    # CRLF waits for the server's delayed ACK (~40 ms a command on Cyrus).
    for tls in ("implicit", "starttls", "none"):
        sock = _open(mailbox, closing, tls=tls).socket()

        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0, tls


def test_capability_helpers(
    mailbox: Mailbox, fresh_dovecot: DovecotFactory, closing: list[IMAPClient]
) -> None:
    client = _open(mailbox, closing)
    assert {"IMAP4REV1", "IDLE", "MOVE", "UIDPLUS"} <= capabilities(client)

    quiet = fresh_dovecot(idle=False)
    quiet_client = connect(quiet.account("sms"), "secret")
    closing.append(quiet_client)
    assert "IDLE" not in capabilities(quiet_client)
    assert "MOVE" in capabilities(quiet_client)


def test_a_temporary_auth_failure_is_a_connection_error(mailbox: Mailbox) -> None:
    # Dovecot answers NO [UNAVAILABLE] when its password database cannot be read:
    # the server's trouble, worth a retry, unlike a wrong password.
    runtime = mailbox.server.runtime_dir
    assert runtime is not None
    (runtime / "users" / mailbox.user).chmod(0)

    with pytest.raises(ImapConnectionError, match=r"cannot log in user .* right now") as caught:
        connect(mailbox.account(), mailbox.password)

    assert "UNAVAILABLE" in str(caught.value)


def test_in_session_the_same_table_translates_a_refused_command_and_a_lost_connection(
    mailbox: Mailbox, closing: list[IMAPClient]
) -> None:
    account = mailbox.account(name="work")
    client = _open(mailbox, closing)

    with pytest.raises(ImapError) as refused, imap_errors(account):
        client.select_folder("no-such-folder")
    assert type(refused.value) is ImapError
    assert "the server refused a command" in str(refused.value)
    assert refused.value.account == "work"

    client.socket().shutdown(socket.SHUT_RDWR)  # the connection is gone under the session
    with pytest.raises(ImapConnectionError, match="connection lost"), imap_errors(account):
        client.noop()


def test_the_table_lists_each_phase_and_every_error_it_raises() -> None:
    phases = {rule.phase for rule in TRANSLATION}
    raised = {rule.error for rule in TRANSLATION}
    assert phases == {"connect", "session"}
    assert raised == {ImapError, ImapAuthError, ImapConnectionError, ImapTlsError}
