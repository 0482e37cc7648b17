"""An OAuth2 account on the test Dovecot with the test OAuth2 server (issue 13)."""

from __future__ import annotations

import re
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx

from inbound_mail.config.model import AccountConfig, OAuth2Config
from inbound_mail.oauth import authorize
from inbound_mail.testing.emails import build_provider_email
from testsupport.dovecot import DovecotServer
from testsupport.oauth_server import OAuthServer

from helpers import wait_until, write_config

__all__ = ["CLIENT_SECRET", "Rig", "device_sign_in", "sms_email"]

CLIENT_SECRET = "client-secret-" + "7" * 20


def sms_email(n: int) -> bytes:
    return build_provider_email("+393471112233", "+393331234333", f"2024050112{n:04d}", f"sms {n}")


class Rig:
    """One test's user, OAuth2 client and files."""

    def __init__(self, auth: OAuthServer, server: DovecotServer, tmp: Path, name: str) -> None:
        self.auth, self.server, self.tmp = auth, server, tmp
        self.mailbox = server.new_mailbox(name)
        self.user = self.mailbox.user
        auth.user = self.user  # who signs in at the provider, as a person would
        self.client_id = f"app-{uuid.uuid4().hex[:8]}"
        self.db = tmp / "state" / "inbound-mail.db"
        self.db.parent.mkdir()
        self.secret_file = tmp / "client-secret"
        self.secret_file.write_text(CLIENT_SECRET + "\n")
        self.secret_file.chmod(0o600)

    def account(self, *, flow: str = "refresh_token", **oauth: Any) -> AccountConfig:
        options: dict[str, Any] = {
            "provider": "custom",
            "client_id": self.client_id,
            "token_url": self.auth.token_url,
            "authorization_url": f"{self.auth.url}/authorize",
            "device_authorization_url": f"{self.auth.url}/device_authorization",
            "scope": ("imap", "offline_access"),
            "flow": flow,
            "timeout": 2.0,
            **oauth,
        }
        if flow == "client_credentials":
            options.update(client_secret_file=self.secret_file, scope=("imap",))
            self.auth.add_client(self.client_id, CLIENT_SECRET, scope="imap", app_user=self.user)
        else:
            self.auth.add_client(self.client_id, None)
        return self.mailbox.account(
            name="m365",
            password_file=None,
            auth="oauth2",
            oauth2=OAuth2Config(**options),
            idle_deadline=5.0,
            connect_timeout=5.0,
        )

    def sign_in(self, account: AccountConfig) -> None:
        """``inbound-mail auth`` by the device flow; the test approves like a person would."""
        device_sign_in(account, self.db, self.auth)

    def config(self, account: AccountConfig) -> Path:
        return write_config(self.tmp / "config.toml", [account], db=self.db)


def device_sign_in(account: AccountConfig, db: Path, auth: OAuthServer) -> None:
    said: list[str] = []
    done: list[object] = []
    thread = threading.Thread(
        target=lambda: done.append(authorize(account, db, flow="device", echo=said.append)),
        daemon=True,
    )
    thread.start()
    wait_until(lambda: said, 10, message="the device code printed")
    match = re.search(r"open (\S+) in a browser and enter the code (\S+)", said[0])
    assert match, said
    # The person opens the page and approves the code.
    answer = httpx.get(match.group(1), params={"user_code": match.group(2)})
    assert answer.status_code == 200
    thread.join(20)
    assert done, "authorize() did not finish"
