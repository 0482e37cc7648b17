"""kill -9 at every step of saving a rotated refresh token: the grant is never lost.

The test OAuth2 server rotates refresh tokens the way Microsoft does (a new one on
every refresh; the old one stays valid until its successor is used), so a process
killed after the provider answered but before the new token reached the disk still
holds a usable one.  Each step of the save is a fault point in ``inbound_mail.oauth``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inbound_mail.oauth import TokenStore, token_store_path
from testsupport.dovecot import DovecotServer
from testsupport.oauth_server import OAuthServer

from helpers import count, wait_until
from oauth_helpers import Rig, sms_email

pytestmark = pytest.mark.faults


def _run_once(config: Path, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INBOUND_MAIL_FAULT": fault or ""}
    return subprocess.run(
        [sys.executable, "-m", "inbound_mail", "--config", str(config), "run", "--once"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.mark.parametrize("point", ["oauth-token-received", "oauth-temp-written", "oauth-renamed"])
def test_kill_9_while_saving_a_rotated_refresh_token(
    oauth_server: OAuthServer, oauth_dovecot: DovecotServer, tmp_path: Path, point: str
) -> None:
    rig = Rig(oauth_server, oauth_dovecot, tmp_path, "rotation")
    oauth_server.access_ttl = 1  # every run below must refresh
    account = rig.account()
    rig.sign_in(account)
    config = rig.config(account)
    store = TokenStore(token_store_path(rig.db, "m365"), "m365")

    def expire() -> None:
        expires = (store.load() or {})["expires_at"]
        wait_until(lambda: time.time() > expires, 10, message="the access token expired")

    rig.mailbox.append(sms_email(1))
    expire()
    refreshes = oauth_server.refreshes
    killed = _run_once(config, f"{point}:1")
    assert killed.returncode == -9, killed.stderr  # killed where armed
    assert oauth_server.refreshes == refreshes + 1, "the provider rotated the token"
    assert store.load() is not None  # whole, readable, private
    assert store.path.stat().st_mode & 0o777 == 0o600
    for attempt in (2, 3):  # the grant still works, and keeps rotating
        rig.mailbox.append(sms_email(attempt))
        expire()
        again = _run_once(config)
        assert again.returncode == 0, again.stderr
        assert count(rig.db) == attempt
    assert not list(store.path.parent.glob("*.tmp")), "no temporary file left behind"
