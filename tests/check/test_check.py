"""``inbound-mail check``: every step against real servers, one actionable line per problem.

The account steps (``@ON_EVERY_SERVER``) run against Dovecot and Cyrus in both layouts.
"""

from __future__ import annotations

import re
import ssl
import stat
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from inbound_mail.cli import cli
from inbound_mail.testing.emails import build_provider_email
from inbound_mail.testing.webhook_receiver import WebhookReceiver
from testsupport.certs import make_certificates
from testsupport.mailbox import Mailbox, MailServer
from testsupport.process import free_ports

from helpers import ON_EVERY_SERVER, write_config


def check(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), "check", *args])


def lines_about(result: Result, subject: str) -> list[str]:
    return [line for line in result.stdout.splitlines() if f" {subject} " in line]


@ON_EVERY_SERVER
def test_a_working_setup_passes_every_step_and_sends_nothing(
    mailbox: Mailbox, tmp_path: Path
) -> None:
    for n in range(2):
        mailbox.append(
            build_provider_email(f"+3934700000{n}", "+393331234333", "20240501120000", "x")
        )
    program = tmp_path / "handler"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(stat.S_IRWXU)
    certs = make_certificates(tmp_path / "certs")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(certs.cert_file, certs.key_file)
    accounts = [mailbox.account(), mailbox.account(name="upgraded", tls="starttls")]
    with WebhookReceiver() as receiver, WebhookReceiver(ssl_context=server_tls) as secure:
        sinks: list[dict[str, Any]] = [
            {"name": "hook", "type": "webhook", "url": f"{receiver.url}?token=tok-123456789"},
            {"name": "secure", "type": "webhook", "url": secure.url, "ca_file": str(certs.ca_file)},
            {"name": "file", "type": "jsonl", "path": str(tmp_path / "out.jsonl")},
            {"name": "script", "type": "command", "argv": [str(program)]},
            {"name": "onpath", "type": "command", "argv": ["true"]},
        ]
        config = write_config(tmp_path / "c.toml", accounts, db=tmp_path / "s.db", sinks=sinks)
        config.chmod(0o600)  # it holds a token inline: else a "permissions" warning
        result = check(config)
        assert receiver.requests == [] and secure.requests == [], "nothing sent without --send-test"
    assert result.exit_code == 0, result.stdout
    # The harness's accounts run with authenticate = "off" (tests/helpers.py): warned about.
    unchecked = ' trust: authenticate = "off"'
    lines = [line for line in result.stdout.splitlines() if unchecked not in line]
    assert not [line for line in lines if not line.startswith("ok ")]
    for name, order in (
        (
            mailbox.user,
            ["password", "DNS", "TCP", "TLS", "login", "capabilities", "folders", "trust"],
        ),
        (
            "upgraded",
            ["password", "DNS", "TCP", "TLS", "login", "capabilities", "folders", "trust"],
        ),
    ):
        account = lines_about(result, f"account {name}")
        assert [line.split(":")[0].split()[-1] for line in account] == order, account
        tls = next(line for line in account if " TLS: " in line)
        assert re.search(r"TLSv1\.[23], certificate CN=localhost by .* \(in \d+ days\)", tls), tls
    assert result.stdout.count("IDLE yes, MOVE yes, UIDPLUS yes") == 2
    assert result.stdout.count("'INBOX': 2 provider emails wait to be read") == 2
    assert "tok-123456789" not in result.stdout, "URLs are shown redacted"
    assert f"secure reachable: {secure.url}: TCP and TLSv1" in result.stdout
    assert "onpath reachable: true is /" in result.stdout


@ON_EVERY_SERVER
def test_each_problem_is_one_failing_line_that_says_what_to_fix(
    mailbox: Mailbox, imap_server: MailServer, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password")
    wrong.chmod(0o600)
    (closed,) = free_ports(1)
    accounts = [
        mailbox.account(name="login", password_file=wrong),
        mailbox.account(name="folder", folders=["INBOX", "Nope"]),
        mailbox.account(name="tcp", port=closed),
        mailbox.account(name="trust", ca_file=None),
        mailbox.account(name="dns", host="imap.does-not-exist.invalid"),
        mailbox.account(
            name="plain", tls="starttls", port=imap_server.imaps_port, connect_timeout=3.0
        ),
    ]
    sinks: list[dict[str, Any]] = [
        {"name": "hook", "type": "webhook", "url": f"http://127.0.0.1:{closed}/x"},
        {"name": "file", "type": "jsonl", "path": str(tmp_path / "missing" / "out.jsonl")},
        {"name": "script", "type": "command", "argv": [str(tmp_path / "absent")]},
        {"name": "onpath", "type": "command", "argv": ["no-such-program-here"]},
        {"name": "typo", "type": "jsonl", "path": "x", "colour": "red"},
    ]
    config = write_config(tmp_path / "c.toml", accounts, db=tmp_path / "s.db", sinks=sinks)
    result = check(config)
    assert result.exit_code == 1
    fails = {
        line.split(":")[0]: line for line in result.stdout.splitlines() if line.startswith("FAIL")
    }
    # Debian's Cyrus names its folders INBOX.NAME, and check says so.
    prefix = mailbox.folder("Nope").removesuffix("Nope")
    layout = f"; its folders are named {prefix}NAME" if prefix else ""
    expected = {
        "FAIL account login login": "check username and password",
        "FAIL account folder folders": f"'Nope' does not exist (the server has 'INBOX'{layout}): "
        "create it, or fix accounts[1]",
        "FAIL account tcp TCP": "Connection refused",
        "FAIL account trust TLS": "set accounts[3].ca_file",
        "FAIL account dns DNS": "check accounts[4].host",
        "FAIL account plain TLS": "see accounts[5].tls",
        "FAIL sink hook reachable": "is the receiver up?",
        "FAIL sink file reachable": "does not exist: create it",
        "FAIL sink script reachable": "does not exist: fix sinks[2].argv",
        "FAIL sink onpath reachable": "is not on PATH",
        "FAIL config invalid": "sinks[4].colour: unknown option",
    }
    assert set(fails) == set(expected), result.stdout
    for key, fix in expected.items():
        assert fix in fails[key], fails[key]
    assert "ok   account folder folders: 'INBOX'" in result.stdout, (
        "the good folder is still checked"
    )


@ON_EVERY_SERVER
def test_the_move_target_is_named_as_the_server_names_it(mailbox: Mailbox, tmp_path: Path) -> None:
    account = mailbox.account(after="move:Processed")
    config = write_config(tmp_path / "c.toml", [account], db=tmp_path / "s.db")
    result = check(config)
    assert result.exit_code == 0, result.stdout
    # INBOX.Processed on Debian's Cyrus, where a folder beside INBOX cannot be created.
    assert mailbox.folder("Processed") in result.stdout, result.stdout


def test_send_test_delivers_one_test_sms_to_each_sink(tmp_path: Path) -> None:
    with WebhookReceiver() as receiver:
        sinks: list[dict[str, Any]] = [
            {"name": "hook", "type": "webhook", "url": receiver.url},
            {"name": "file", "type": "jsonl", "path": str(tmp_path / "out.jsonl")},
        ]
        config = write_config(tmp_path / "c.toml", db=tmp_path / "s.db", sinks=sinks)
        result = check(config, "--send-test")
        [request] = receiver.requests
    assert "text=inbound-mail+check" in request.body.decode()
    assert "ok   sink hook test send: delivered test SMS" in result.stdout
    assert "test message, please ignore" in (tmp_path / "out.jsonl").read_text()
    assert result.exit_code == 1, "a config without accounts fails the check"
    assert "FAIL config accounts: no [[accounts]]" in result.stdout


def test_a_config_open_to_others_with_inline_secrets_is_warned_about(
    tmp_path: Path, caplog: Any
) -> None:
    import logging

    from inbound_mail.config.reader import load_config
    from inbound_mail.service.daemon import Daemon

    sinks: list[dict[str, Any]] = [
        {"name": "hook", "type": "webhook", "url": "http://127.0.0.1:9/x?code=AzUrEkEy123"},
        {"name": "signed", "type": "webhook", "url": "http://127.0.0.1:9/y",
         "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
        {"name": "file", "type": "jsonl", "path": str(tmp_path / "out.jsonl")},
    ]  # fmt: skip
    config = write_config(tmp_path / "c.toml", db=tmp_path / "s.db", sinks=sinks)
    config.chmod(0o644)
    [warning] = [line for line in check(config).stdout.splitlines() if "permissions" in line]
    assert warning.startswith("warn config permissions:")
    assert "mode 0644" in warning and f"chmod 600 {config}" in warning
    assert "sinks[0].url" in warning and "sinks[1].secret" in warning and "sinks[2]" not in warning
    assert "AzUrEkEy123" not in warning and "whsec_" not in warning
    caplog.set_level(logging.WARNING)
    Daemon(load_config(config)).run_once()  # at start-up too
    assert [r for r in caplog.records if r.getMessage() == "config.secrets_exposed"]
    config.chmod(0o600)
    assert "permissions" not in check(config).stdout
