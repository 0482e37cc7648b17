"""Logs: no secret in any line, even at DEBUG; journald and JSON formats; quiet libraries."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from inbound_mail.logs import log_event, setup_logging
from inbound_mail.testing.emails import build_provider_email
from inbound_mail.testing.webhook_receiver import Answer, WebhookReceiver
from testsupport.dovecot import DovecotServer
from testsupport.mailbox import Mailbox
from testsupport.oauth_server import OAuthServer

from helpers import DaemonProcess, rows, wait_until, write_config
from oauth_helpers import CLIENT_SECRET, Rig


def _variants(secret: str) -> set[str]:
    """The secret as it could leak: raw, URL-quoted, base64 (alone or in SASL PLAIN)."""
    found = {secret, quote(secret, safe=""), base64.b64encode(secret.encode()).decode()}
    return {v for v in found if len(v) >= 6}


def test_no_secret_reaches_the_log_at_debug_level(
    mailbox: Mailbox, dovecot: DovecotServer, tmp_path: Path
) -> None:
    token, bearer, basic = (f"tok{uuid.uuid4().hex}" for _ in range(3))
    signing = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    wrong = f"wrong-{uuid.uuid4().hex}"
    good = mailbox.account(name="good", idle_deadline=5.0, connect_timeout=5.0)
    bad = dovecot.account(
        mailbox.user,
        tls="starttls",
        name="bad",
        password_file=None,
        password_env="INBOUND_TEST_WRONG_PASSWORD",
        connect_timeout=5.0,
    )
    with WebhookReceiver() as json_hook, WebhookReceiver(path="/basic") as form_hook:
        json_hook.script(Answer(status=503, body=f"no, token {token} and {bearer} are wrong"))
        sinks: list[dict[str, Any]] = [
            {
                "name": "signed",
                "type": "webhook",
                "format": "json",
                "retry_base": "0.2s",
                "url": f"{json_hook.url}?token={token}",
                "secret": signing,
                "headers": {"Authorization": f"Bearer {bearer}"},
            },
            {
                "name": "basic",
                "type": "webhook",
                "url": form_hook.url.replace("http://", f"http://hook-user:{basic}@"),
            },
        ]
        config = write_config(tmp_path / "c.toml", [good, bad], db=tmp_path / "s.db", sinks=sinks)
        env = {"INBOUND_TEST_WRONG_PASSWORD": wrong}
        daemon = DaemonProcess(config, args=("--log-level", "DEBUG", "run"), env=env)
        try:
            daemon.wait_log("state=idle")
            mailbox.append(
                build_provider_email(
                    "+393471112233", "+393331234333", "20240501120000", "secret test"
                )
            )
            wait_until(lambda: delivered(tmp_path / "s.db") == 2, 20)
            daemon.wait_log("imap.disconnected", occurrences=2, timeout=30)
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(10) == 0
        finally:
            daemon.close()
        assert len(json_hook.requests) == 2 and len(form_hook.requests) == 1
    log = daemon.log
    assert "outcome=failed" in log and "check username and password" in log, log
    secrets = [mailbox.password, wrong, token, bearer, basic, signing, signing[6:]]
    secrets.append(f"\0{mailbox.user}\0{mailbox.password}")  # AUTHENTICATE PLAIN
    for secret in secrets:
        for variant in _variants(secret):
            assert variant not in log, f"a secret ({variant[:4]}...) is in the log:\n{log}"
    assert "> b'" not in log, "imapclient's protocol trace must stay off"


def test_no_oauth2_token_reaches_the_log_at_debug_level(
    oauth_server: OAuthServer, oauth_dovecot: DovecotServer, tmp_path: Path
) -> None:
    """Issue 13: access tokens, refresh tokens (first and rotated), the client secret and
    the SASL XOAUTH2 / OAUTHBEARER strings built from them never reach a log line, through
    a sign-in, refreshes, a failing token endpoint (HTTP 500) and the backoff after it."""
    rig = Rig(oauth_server, oauth_dovecot, tmp_path, "logs")
    account = rig.account(flow="client_credentials")
    config = rig.config(account)
    oauth_server.access_ttl = 2  # several refreshes during the run
    daemon = DaemonProcess(config, args=("--log-level", "DEBUG", "run"))
    try:
        daemon.wait_log("state=idle", timeout=30)
        wait_until(lambda: oauth_server.tokens[-1].is_expired(), 10)
        rig.mailbox.kick()  # a new login after the token expired: a refresh
        daemon.wait_log("oauth.token_refreshed", occurrences=2, timeout=30)
        oauth_server.token_fault = "500"
        wait_until(lambda: oauth_server.tokens[-1].is_expired(), 10)
        rig.mailbox.kick()
        daemon.wait_log("answered HTTP 500", timeout=30)
        daemon.wait_log("state=backoff", timeout=30)
        oauth_server.token_fault = None
        daemon.wait_log("state=idle", occurrences=2, timeout=60)
    finally:
        daemon.close()
    log = daemon.log
    secrets = [CLIENT_SECRET]
    for issued in oauth_server.tokens:
        if issued.user == rig.user:
            secrets.append(issued.access_token)
            secrets.append(f"user={rig.user}\1auth=Bearer {issued.access_token}\1\1")
            secrets.append(f"n,a={rig.user},\1auth=Bearer {issued.access_token}\1\1")
            if issued.refresh_token:
                secrets.append(issued.refresh_token)
    assert len(secrets) > 4
    for secret in secrets:
        for variant in _variants(secret):
            assert variant not in log, f"a secret ({variant[:4]}...) is in the log:\n{log}"


def delivered(db: Path) -> int:
    return int(rows(db, "SELECT count(*) FROM deliveries WHERE status = 'delivered'")[0][0])


def _run_once_failing(tmp_path: Path, *args: str, env: dict[str, str]) -> tuple[int, str, Path]:
    """``run --once`` with an account nobody answers: one ERROR line, quickly."""
    account = {
        "name": "gone",
        "host": "127.0.0.1",
        "port": 1,
        "username": "u",
        "password_env": "INBOUND_TEST_PW",
    }
    config = tmp_path / "c.toml"
    lines = [f'path = "{tmp_path / "s.db"}"', "[[accounts]]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in account.items()]
    config.write_text("[database]\n" + "\n".join(lines) + "\n", encoding="utf-8")
    stderr_path = tmp_path / "stderr.log"
    with stderr_path.open("wb") as stderr:
        code = subprocess.run(
            [sys.executable, "-m", "inbound_mail", "--config", str(config), *args, "run", "--once"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            timeout=60,
            env={**os.environ, "INBOUND_TEST_PW": "x", **env},
        ).returncode
    return code, stderr_path.read_text(encoding="utf-8"), stderr_path


def test_journald_lines_carry_a_priority_and_no_timestamp(tmp_path: Path) -> None:
    stderr_path = tmp_path / "stderr.log"
    stderr_path.touch()
    info = os.stat(stderr_path)  # the file the child's stderr will be: the journal's stream
    code, text, _ = _run_once_failing(
        tmp_path, env={"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
    )
    assert code == 1
    failed = [line for line in text.splitlines() if "imap.failed" in line]
    assert failed and failed[0].startswith("<3>ERROR imap.failed account=gone"), text


def test_a_journal_stream_elsewhere_keeps_timestamps(tmp_path: Path) -> None:
    code, text, _ = _run_once_failing(tmp_path, env={"JOURNAL_STREAM": "1:1"})
    failed = [line for line in text.splitlines() if "imap.failed" in line]
    assert code == 1 and failed and failed[0][:4].isdigit() and "Z ERROR imap.failed" in failed[0]


def test_json_format_is_one_object_a_line(tmp_path: Path) -> None:
    code, text, _ = _run_once_failing(tmp_path, "--log-format", "json", env={})
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    failed = [e for e in events if e["event"] == "imap.failed"]
    assert code == 1 and failed and failed[0]["account"] == "gone" and failed[0]["level"] == "ERROR"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    names = ("", "inbound_mail", "mailparser")
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers)) for n in names}
    yield
    for name, (level, handlers) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.handlers[:] = handlers


def test_libraries_are_quiet_and_their_lines_are_key_value(restore_logging: None) -> None:
    out = io.StringIO()
    setup_logging("DEBUG", "text", stream=out)
    logging.getLogger("imapclient.imaplib").debug("> b'A001 LOGIN user secret'")
    logging.getLogger("httpx").info("HTTP Request: POST https://x/?token=abc")
    logging.getLogger("mailparser.core").warning("inline part without a filename")
    logging.getLogger("apscheduler.executors.default").warning("Run time of job %r missed", "hb")
    log_event(logging.getLogger("inbound_mail.test"), logging.DEBUG, "still.here")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].endswith(
        "WARNING log logger=apscheduler.executors.default message=\"Run time of job 'hb' missed\""
    )
    assert lines[1].endswith("DEBUG still.here")
