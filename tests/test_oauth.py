"""OAuth2 sign-in (issue 13), against real parts: Dovecot's oauth2 passdb introspecting
tokens at a real OAuth2 server (Authlib) on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from inbound_mail.config.reader import load_config
from inbound_mail.errors import AuthorizationExpiredError, CredentialError, OAuthError
from inbound_mail.oauth import TokenSource, TokenStore, authorize, token_store_path
from inbound_mail.service.status import collect_status
from inbound_mail.sources.imap.oauth import connect_oauth
from testsupport.dovecot import DovecotServer
from testsupport.oauth_server import OAuthServer

from helpers import count, in_process_daemon, wait_until, write_config
from oauth_helpers import CLIENT_SECRET, Rig, device_sign_in, sms_email


@pytest.fixture
def rig(oauth_server: OAuthServer, oauth_dovecot: DovecotServer, tmp_path: Path) -> Rig:
    return Rig(oauth_server, oauth_dovecot, tmp_path, "oauth")


# -- logins, sync, IDLE ----------------------------------------------------------------------


@pytest.mark.parametrize("sasl", ["xoauth2", "oauthbearer"])
def test_login_sync_and_idle_push_with_each_mechanism(rig: Rig, sasl: str) -> None:
    account = rig.account(sasl=sasl)
    rig.sign_in(account)
    rig.mailbox.append(sms_email(1))
    with in_process_daemon(rig.config(account)) as daemon:
        worker = daemon.account_workers[0]
        try:
            wait_until(lambda: count(rig.db) == 1, 30)
        except TimeoutError:
            raise AssertionError(worker.health.last_error) from None
        worker = daemon.account_workers[0]
        wait_until(lambda: worker.health.state == "idle", 20)
        rig.mailbox.append(sms_email(2))  # pushed through IDLE
        wait_until(lambda: count(rig.db) == 2, 30, message="the IDLE push stored")
    log = rig.server.log_path.read_text()
    assert f"user=<{rig.user}>, method={sasl.upper()}" in log


def test_auto_prefers_oauthbearer_when_offered(rig: Rig) -> None:
    account = rig.account()
    rig.sign_in(account)
    client = connect_oauth(account, TokenSource(account, rig.db))
    client.logout()
    assert f"user=<{rig.user}>, method=OAUTHBEARER" in rig.server.log_path.read_text()


def test_a_token_expiring_while_idle_is_refreshed_for_the_next_login(rig: Rig) -> None:
    rig.auth.access_ttl = 3
    account = rig.account()
    rig.sign_in(account)
    rig.mailbox.append(sms_email(1))
    with in_process_daemon(rig.config(account)) as daemon:
        worker = daemon.account_workers[0]
        wait_until(lambda: count(rig.db) == 1 and worker.health.state == "idle", 30)
        stored = TokenStore(token_store_path(rig.db, "m365"), "m365").load() or {}
        first = stored["access_token"]
        wait_until(lambda: time.time() > stored["expires_at"] + 0.5, 10, message="expiry")
        rig.mailbox.append(sms_email(2))  # arrives while the old token is dead: still IDLE
        wait_until(lambda: count(rig.db) == 2, 30)
        rig.mailbox.kick()  # the server drops the session: the next login needs a new token
        rig.mailbox.append(sms_email(3))
        wait_until(lambda: count(rig.db) == 3, 30, message="the SMS after the re-login")
        renewed = TokenStore(token_store_path(rig.db, "m365"), "m365").load() or {}
        assert renewed["access_token"] != first
    ids = [r[0] for r in _rows(rig.db, "SELECT id FROM messages")]
    assert len(ids) == len(set(ids)) == 3  # nothing lost, nothing doubled


def _rows(db: Path, query: str) -> list[tuple[Any, ...]]:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return list(conn.execute(query))


def test_a_refused_token_is_refreshed_once_and_the_login_retried(rig: Rig) -> None:
    account = rig.account()
    rig.sign_in(account)
    store = TokenStore(token_store_path(rig.db, "m365"), "m365")
    tokens = store.load() or {}
    store.save({**tokens, "access_token": "revoked-or-unknown-token-xyz"})  # still "valid" here
    client = connect_oauth(account, TokenSource(account, rig.db))
    client.logout()
    assert (store.load() or {})["access_token"] != "revoked-or-unknown-token-xyz"


# -- a revoked grant ----------------------------------------------------------------------------


def test_a_revoked_grant_is_critical_until_auth_and_reload(rig: Rig) -> None:
    account = rig.account()
    rig.sign_in(account)
    other = rig.server.new_mailbox("other")  # a password account beside it: unaffected
    neighbour = other.account(name="neighbour", idle_deadline=5.0, connect_timeout=5.0)
    config_path = write_config(
        rig.tmp / "config.toml",
        [account, neighbour],
        db=rig.db,
        extra='[metrics]\nlisten = "127.0.0.1:0"\n',
    )
    with in_process_daemon(config_path) as daemon:
        worker, beside = daemon.account_workers
        wait_until(lambda: worker.health.state == "idle" == beside.health.state, 30)
        rig.auth.revoke_user(rig.user)  # an admin revokes the app's sessions
        rig.mailbox.kick()
        wait_until(lambda: worker.health.state == "authorization_expired", 30)
        assert "run `inbound-mail auth m365`" in (worker.health.last_error or "")
        attempts = rig.auth.token_requests
        report = wait_until(
            lambda: _critical(load_config(config_path)), 30, message="status CRITICAL"
        )
        assert "authorization expired: run `inbound-mail auth m365`" in "\n".join(report)
        assert daemon.metrics is not None and daemon.metrics.address is not None
        scrape = httpx.get(f"http://127.0.0.1:{daemon.metrics.address[1]}/metrics").text
        assert 'inbound_mail_account_authorization_expired{account="m365"} 1.0' in scrape
        assert 'inbound_mail_account_authorization_expired{account="neighbour"} 0.0' in scrape
        other.append(sms_email(5))  # the other account goes on
        wait_until(lambda: count(rig.db) == 1, 30, message="the neighbour's SMS")
        assert rig.auth.token_requests == attempts  # no tight retry loop
        assert worker.health.state == "authorization_expired"
        # A person signs in again; the reload brings the account back by itself.
        rig.sign_in(account)
        rig.mailbox.append(sms_email(7))
        daemon.request_reload()
        wait_until(lambda: count(rig.db) == 2, 30, message="the account resumed")
        wait_until(lambda: daemon.account_workers[0].health.state == "idle", 30)


def _critical(config: Any) -> list[str] | None:
    report = collect_status(config)
    lines = report.lines()
    return lines if any("authorization expired" in line for line in lines) else None


# -- the one-time authorisation ------------------------------------------------------------------


def test_loopback_flow_with_pkce(rig: Rig) -> None:
    account = rig.account()
    said: list[str] = []
    done: list[object] = []
    thread = threading.Thread(
        target=lambda: done.append(
            authorize(account, rig.db, flow="loopback", echo=said.append, open_browser=False)
        ),
        daemon=True,
    )
    thread.start()
    wait_until(lambda: said, 10)
    url = said[0].splitlines()[-1]
    assert "code_challenge=" in url and "code_challenge_method=S256" in url
    # The person's browser: the provider redirects to the listener on 127.0.0.1.
    page = httpx.get(url, follow_redirects=True)
    assert page.status_code == 200 and "authorisation received" in page.text
    thread.join(20)
    assert done
    stored = TokenStore(token_store_path(rig.db, "m365"), "m365").load() or {}
    assert stored["refresh_token"] in rig.auth.active_refresh_tokens(rig.user)
    client = connect_oauth(account, TokenSource(account, rig.db))
    client.logout()


def test_device_flow_via_the_cli(rig: Rig) -> None:
    account = rig.account()
    config = rig.config(account)
    proc = subprocess.Popen(
        [sys.executable, "-m", "inbound_mail", "--config", str(config), "auth", "m365"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        match = re.search(r"open (\S+) in a browser and enter the code (\S+)", first)
        assert match, first
        httpx.get(match.group(1), params={"user_code": match.group(2)})
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "authorised account 'm365'" in out
    path = token_store_path(rig.db, "m365")
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_client_credentials_run_once_backfill_and_check(rig: Rig) -> None:
    account = rig.account(flow="client_credentials")
    config = rig.config(account)
    rig.mailbox.append(sms_email(1))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "inbound_mail", "--config", str(config), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert cli("auth", "m365").returncode == 0  # app-only: proves the secret works
    once = cli("run", "--once")
    assert once.returncode == 0, once.stderr
    assert count(rig.db) == 1
    rig.mailbox.append(sms_email(2))
    back = cli("backfill", "--account", "m365")
    assert back.returncode == 0, back.stderr
    assert count(rig.db) == 2
    check = cli("check")
    assert "ok   account m365: token" in check.stdout or "token" in check.stdout, check.stdout
    assert f"logged in as {rig.user}" in check.stdout, check.stdout
    assert "scope granted: imap" in check.stdout
    for text in (once.stderr, back.stderr, check.stdout, check.stderr):
        assert CLIENT_SECRET not in text


# -- a failing token endpoint -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("html", "not a JSON token response"),
        ("500", "answered HTTP 500 (text/html)"),
        ("slow", "did not answer within 2 s"),
    ],
)
def test_a_failing_token_endpoint_gives_a_clear_error(rig: Rig, fault: str, expected: str) -> None:
    account = rig.account(flow="client_credentials")
    rig.auth.token_fault = fault
    rig.auth.slow_seconds = 4.0
    with pytest.raises(OAuthError) as caught:
        TokenSource(account, rig.db).access_token()
    assert not isinstance(caught.value, AuthorizationExpiredError)
    assert expected in str(caught.value)
    assert CLIENT_SECRET not in str(caught.value)


# -- the token store ----------------------------------------------------------------------------


def test_the_token_store_refuses_a_symlink_and_a_loose_file(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text("{}")
    target.chmod(0o600)
    path = tmp_path / "s.db.oauth" / "a.json"
    path.parent.mkdir(mode=0o700)
    path.symlink_to(target)
    store = TokenStore(path, "a")
    with pytest.raises(CredentialError, match="cannot read"):
        store.load()
    with pytest.raises(CredentialError, match="symbolic link"):
        store.save({"refresh_token": "r" * 20})
    assert target.read_text() == "{}"
    path.unlink()
    path.write_text(json.dumps({"refresh_token": "x"}))
    path.chmod(0o644)
    with pytest.raises(CredentialError, match="chmod 600"):
        store.load()


def test_a_configured_refresh_token_is_used_until_the_store_holds_one(rig: Rig) -> None:
    # A first refresh token given like a password (refresh_token_file); once rotated,
    # the store's current one is used first.
    seed_account = rig.account()
    device_sign_in(seed_account, rig.tmp / "seed.db", rig.auth)
    seed = (TokenStore(token_store_path(rig.tmp / "seed.db", "m365"), "m365").load() or {})[
        "refresh_token"
    ]
    given = rig.tmp / "refresh-token"
    given.write_text(seed)
    given.chmod(0o600)
    assert seed_account.oauth2 is not None
    account = replace(seed_account, oauth2=replace(seed_account.oauth2, refresh_token_file=given))
    tokens = TokenSource(account, rig.db)
    tokens.access_token()
    stored = TokenStore(token_store_path(rig.db, "m365"), "m365").load() or {}
    assert stored["refresh_token"] != seed  # rotated, and saved
    tokens.access_token(force=True)
    assert rig.auth.refreshes >= 2


def test_an_expired_authorisation_is_not_a_stall(rig: Rig) -> None:
    """The worker waits an hour on its stop event: the watchdog must not restart it."""
    import threading as _threading

    from inbound_mail.config.model import ParseOptions
    from inbound_mail.service.generation import account_stalled
    from inbound_mail.sources.imap.worker import AccountWorker

    worker = AccountWorker(
        rig.account(),
        db_path=rig.db,
        parse_options=ParseOptions(),
        stop=_threading.Event(),
    )
    worker.health.state = "authorization_expired"
    worker.health.last_tick = time.monotonic() - 3600
    assert not account_stalled(worker, time.monotonic())


def test_systemd_unit_loads_the_oauth2_credentials(rig: Rig) -> None:
    from inbound_mail.service.systemd import credential_names

    account = rig.account(client_secret_credential="m365-secret")
    config = load_config(rig.config(account))
    assert credential_names(config) == ["m365-secret"]


def test_check_reports_an_expired_authorisation(rig: Rig) -> None:
    account = rig.account()
    rig.sign_in(account)
    store = TokenStore(token_store_path(rig.db, "m365"), "m365")
    store.save({**(store.load() or {}), "expires_at": 0})  # check must refresh
    rig.auth.revoke_user(rig.user)
    result = subprocess.run(
        [sys.executable, "-m", "inbound_mail", "--config", str(rig.config(account)), "check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "FAIL" in result.stdout and "token" in result.stdout
    assert "run `inbound-mail auth m365`" in result.stdout, result.stdout
