"""``check`` and the messages a user reads: an invalid sink makes the config invalid,
a certificate for other names shows those names, a missing folder shows what
exists, the server's words are text (never ``b'...'``) and the account is named once.

Against the real Dovecot, through a TCP proxy on 127.0.0.2 where another host name
is needed (the test certificate names only 127.0.0.1 and localhost).
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from inbound_mail.cli import cli
from inbound_mail.config.model import TlsMode
from inbound_mail.config.reader import load_config
from inbound_mail.errors import ConfigError
from inbound_mail.testing.webhook_receiver import WebhookReceiver
from testsupport.certs import make_certificates
from testsupport.mailbox import Mailbox
from testsupport.proxy import FaultProxy

from helpers import in_process_daemon, wait_until, write_config


def invoke(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args])


def wrong_password(mailbox: Mailbox, tmp_path: Path) -> Path:
    secret = tmp_path / "wrong"
    secret.write_text("not-the-password")
    secret.chmod(0o600)
    account = mailbox.account(password_file=secret, connect_timeout=5.0)
    return write_config(tmp_path / "c.toml", [account], db=tmp_path / "s.db")


def test_a_mistyped_sink_key_makes_the_config_invalid(mailbox: Mailbox, tmp_path: Path) -> None:
    sinks = [
        {"name": "good", "type": "jsonl", "path": str(tmp_path / "out.jsonl")},
        {"name": "typo", "type": "jsonl", "path": str(tmp_path / "x.jsonl"), "flush": "1s"},
    ]
    config = write_config(tmp_path / "c.toml", [mailbox.account()], db=tmp_path / "s.db",
                          sinks=sinks)  # fmt: skip
    result = invoke(config, "check")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("FAIL config invalid: ") and "sinks[1].flush" in lines[0], lines
    assert not any("config valid" in line for line in lines), lines
    assert not any(" sink typo " in line for line in lines), "reported once, as config"
    assert "ok   sink good options: a valid jsonl sink" in lines


def test_a_valid_config_counts_in_the_singular(mailbox: Mailbox, tmp_path: Path) -> None:
    sinks = [{"name": "file", "type": "jsonl", "path": str(tmp_path / "out.jsonl")}]
    config = write_config(tmp_path / "c.toml", [mailbox.account()], db=tmp_path / "s.db",
                          sinks=sinks)  # fmt: skip
    result = invoke(config, "check")
    assert result.exit_code == 0, result.stdout
    assert result.stdout.splitlines()[0].endswith(": 1 account, 1 sink")


@pytest.fixture
def other_name(mailbox: Mailbox) -> Iterator[dict[str, FaultProxy]]:
    """Proxies on 127.0.0.2 to Dovecot's implicit-TLS and plain ports."""
    proxies: dict[str, FaultProxy] = {}
    for tls, port in (("implicit", mailbox.server.imaps_port),
                      ("starttls", mailbox.server.imap_port)):  # fmt: skip
        proxy = FaultProxy("127.0.0.1", port)
        proxy.host = "127.0.0.2"
        proxy.start()
        proxies[tls] = proxy
    yield proxies
    for proxy in proxies.values():
        proxy.close()


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_a_certificate_for_other_names_shows_them_not_ca_file(
    mailbox: Mailbox, other_name: dict[str, FaultProxy], tmp_path: Path, tls: TlsMode
) -> None:
    account = mailbox.account(tls=tls, host="127.0.0.2", port=other_name[tls].port)
    config = write_config(tmp_path / "c.toml", [account], db=tmp_path / "s.db")
    result = invoke(config, "check")
    assert result.exit_code == 1
    [tls_line] = [line for line in result.stdout.splitlines() if " TLS: " in line]
    assert tls_line.startswith("FAIL"), result.stdout
    assert "is not valid for 127.0.0.2: it names IP:127.0.0.1, DNS:localhost" in tls_line
    assert "accounts[0].host" in tls_line and "ca_file" not in tls_line
    once = invoke(config, "run", "--once")  # the daemon says the same
    assert once.exit_code == 1
    assert "it names IP:127.0.0.1, DNS:localhost" in once.output


def test_starttls_lines_come_in_protocol_order(mailbox: Mailbox, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", [mailbox.account(tls="starttls")],
                          db=tmp_path / "s.db")  # fmt: skip
    result = invoke(config, "check")
    steps = [line.split(":")[0].split()[-1] for line in result.stdout.splitlines()
             if f" account {mailbox.user} " in line]  # fmt: skip
    assert steps[:5] == ["password", "DNS", "TCP", "TLS", "login"], result.stdout


def test_a_missing_folder_lists_the_servers_folders(mailbox: Mailbox, tmp_path: Path) -> None:
    mailbox.create_folder("Archive2024")
    account = mailbox.account(folders=("INBOX", "Archive"))
    config = write_config(tmp_path / "c.toml", [account], db=tmp_path / "s.db")
    result = invoke(config, "check")
    assert result.exit_code == 1
    [missing] = [line for line in result.stdout.splitlines() if "'Archive' does not" in line]
    assert missing.startswith("FAIL"), missing
    assert "the server has 'Archive2024', 'INBOX'" in missing
    assert "accounts[0].folders" in missing


def test_a_refused_login_is_told_once_in_plain_text(mailbox: Mailbox, tmp_path: Path) -> None:
    config = wrong_password(mailbox, tmp_path)
    once = invoke(config, "run", "--once")
    assert once.exit_code == 1
    [failed] = [line for line in once.output.splitlines() if " failed: " in line]
    assert failed.startswith(f"account {mailbox.user!r} failed: login refused"), failed
    assert failed.count(mailbox.user) == 2, failed  # the account once, then the user name
    assert "server said: [AUTHENTICATIONFAILED]" in failed
    checked = invoke(config, "check")
    [login] = [line for line in checked.stdout.splitlines() if " login: " in line]
    assert login.startswith(f"FAIL account {mailbox.user} login: login refused"), login
    assert "server said: [AUTHENTICATIONFAILED]" in login
    for text in (once.output, checked.stdout):
        # A bytes literal starts a word (b'...'); the user name may end in "b" before a quote.
        assert not re.search(r"\bb['\"]", text), text


def test_a_bad_duration_explains_itself_once(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[database]\nraw_retention = "forever"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).count("30s") == 1, caught.value
    path.write_text("[database]\nraw_retention = -1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"got an integer -1 \(negative\)$"):
        load_config(path)
    sink = '[[sinks]]\nname = "h"\ntype = "webhook"\nurl = "http://h"\ntimeout = "soon"\n'
    path.write_text(sink, encoding="utf-8")
    config = load_config(path)
    from inbound_mail.sinks import create_sink

    with pytest.raises(ConfigError) as bad_sink:
        create_sink(replace(config.sinks[0]))
    assert str(bad_sink.value).count("30s") == 1, bad_sink.value
    assert "got 'soon'" in str(bad_sink.value)


def test_import_summary_says_1_file(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an email\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["--db", str(tmp_path / "s.db"), "import", str(folder)])
    assert result.exit_code == 0, result.output
    assert "1 file that is not email" in result.output and "1 files" not in result.output


def test_a_silent_tls_port_is_described_in_text(mailbox: Mailbox, tmp_path: Path) -> None:
    account = mailbox.account(tls="starttls", port=mailbox.server.imaps_port, connect_timeout=2.0)
    config = write_config(tmp_path / "c.toml", [account], db=tmp_path / "s.db")
    result = invoke(config, "check")
    [tls] = [line for line in result.stdout.splitlines() if " TLS: " in line]
    assert "(timed out): a TLS-only port?" in tls and "b'" not in tls, tls


def test_a_webhook_certificate_for_other_names_shows_them(mailbox: Mailbox, tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "certs")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(certs.cert_file, certs.key_file)
    with WebhookReceiver(ssl_context=server_tls) as secure:
        proxy = FaultProxy("127.0.0.1", secure.port)
        proxy.host = "127.0.0.2"
        proxy.start()
        try:
            url = f"https://127.0.0.2:{proxy.port}/inbound-sms"
            sinks = [{"name": "hook", "type": "webhook", "url": url, "ca_file": str(certs.ca_file)}]
            config = write_config(tmp_path / "c.toml", [mailbox.account()], db=tmp_path / "s.db",
                                  sinks=sinks)  # fmt: skip
            result = invoke(config, "check")
        finally:
            proxy.close()
    [reach] = [line for line in result.stdout.splitlines() if " hook reachable: " in line]
    assert reach.startswith("FAIL"), reach
    assert "is not valid for 127.0.0.2: it names IP:127.0.0.1, DNS:localhost" in reach
    assert "sinks[0].url" in reach and "ca_file" not in reach, reach


def test_status_names_a_failing_account_once(mailbox: Mailbox, tmp_path: Path) -> None:
    config = wrong_password(mailbox, tmp_path)
    with in_process_daemon(config) as daemon:
        wait_until(lambda: daemon.account_workers[0].health.last_error is not None, 20)
        wait_until(lambda: "disconnected" in invoke(config, "status").output, 20)
        status = invoke(config, "status").output
    [line] = [line for line in status.splitlines() if "disconnected, retrying: " in line]
    assert "disconnected, retrying: login refused" in line, line
    assert line.count(mailbox.user) == 2, line  # the account, then the user name
