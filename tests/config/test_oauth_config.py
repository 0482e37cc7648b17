"""The ``[accounts.oauth2]`` table: provider presets and errors that name file and key.

Google's and Microsoft's endpoints cannot be reached from the tests: their presets
are checked here as config (URLs, scopes), at the narrowest seam."""

from __future__ import annotations

from pathlib import Path

import pytest

from inbound_mail.config.model import AccountConfig
from inbound_mail.config.reader import load_config
from inbound_mail.errors import ConfigError
from inbound_mail.oauth import default_auth_flow

ACCOUNT = '[[accounts]]\nname = "m"\nhost = "outlook.office365.com"\nusername = "sms@example.com"\n'


def _load(tmp_path: Path, text: str) -> AccountConfig:
    path = tmp_path / "c.toml"
    path.write_text(ACCOUNT + text, encoding="utf-8")
    return load_config(path).accounts[0]


def test_microsoft_preset_delegated(tmp_path: Path) -> None:
    account = _load(
        tmp_path,
        'auth = "oauth2"\n[accounts.oauth2]\nprovider = "microsoft"\nclient_id = "abc"\n'
        'tenant = "contoso.onmicrosoft.com"\n',
    )
    oauth = account.oauth2
    assert oauth is not None
    base = "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/"
    assert oauth.token_url == base + "token"
    assert oauth.device_authorization_url == base + "devicecode"
    assert oauth.scope == ("https://outlook.office.com/IMAP.AccessAsUser.All", "offline_access")
    assert default_auth_flow(oauth) == "device"
    assert account.password_file is None


def test_microsoft_preset_app_only(tmp_path: Path) -> None:
    account = _load(
        tmp_path,
        'auth = "oauth2"\n[accounts.oauth2]\nprovider = "microsoft"\nclient_id = "abc"\n'
        'tenant = "1b2c3d4e-0000-0000-0000-000000000000"\nflow = "client_credentials"\n'
        'client_secret_env = "M365_SECRET"\n',
    )
    oauth = account.oauth2
    assert oauth is not None
    assert oauth.scope == ("https://outlook.office365.com/.default",)
    assert oauth.token_url.startswith("https://login.microsoftonline.com/1b2c3d4e-")


def test_google_preset(tmp_path: Path) -> None:
    account = _load(
        tmp_path,
        'auth = "oauth2"\n[accounts.oauth2]\nprovider = "google"\nclient_id = "x.apps"\n'
        'client_secret_file = "secret"\n',
    )
    oauth = account.oauth2
    assert oauth is not None
    assert oauth.token_url == "https://oauth2.googleapis.com/token"
    assert oauth.authorization_url == "https://accounts.google.com/o/oauth2/v2/auth"
    assert oauth.scope == ("https://mail.google.com/",)
    assert default_auth_flow(oauth) == "loopback"  # Google's device flow forbids mail
    assert oauth.client_secret_file == tmp_path / "secret"


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        (
            'auth = "oauth2"\n[accounts.oauth2]\nprovider = "custom"\nclient_id = "a"\n'
            'scope = ["imap"]\n',
            "accounts[0].oauth2.token_url",
            "required",
        ),
        (
            'auth = "oauth2"\n[accounts.oauth2]\nprovider = "custom"\nclient_id = "a"\n'
            'scope = ["imap"]\ntoken_url = "http://auth.example.com/token"\n',
            "accounts[0].oauth2.token_url",
            "http:// only to a loopback address",
        ),
        (
            'auth = "oauth2"\n[accounts.oauth2]\nprovider = "microsoft"\nclient_id = "a"\n'
            'flow = "client_credentials"\ntenant = "contoso.com"\n',
            "accounts[0].oauth2.client_secret_file",
            "needs the app's secret",
        ),
        (
            'auth = "oauth2"\n[accounts.oauth2]\nprovider = "microsoft"\nclient_id = "a"\n'
            'flow = "client_credentials"\nclient_secret_env = "S"\n',
            "accounts[0].oauth2.tenant",
            "own tenant",
        ),
        (
            'auth = "oauth2"\n[accounts.oauth2]\nprovider = "google"\nclient_id = "a"\n'
            'flow = "client_credentials"\n',
            "accounts[0].oauth2.flow",
            "refresh_token",
        ),
        (
            'auth = "oauth2"\npassword_env = "P"\n[accounts.oauth2]\nprovider = "google"\n'
            'client_id = "a"\n',
            "accounts[0].password_env",
            "takes no password",
        ),
        (
            'password_env = "P"\n[accounts.oauth2]\nprovider = "google"\nclient_id = "a"\n',
            "accounts[0].oauth2",
            'needs auth = "oauth2"',
        ),
        (
            'auth = "oauth2"\n[accounts.oauth2]\nprovider = "google"\nclient_id = "a"\n'
            'client_secret_env = "A"\nclient_secret_file = "b"\n',
            "accounts[0].oauth2.client_secret_env",
            "at most one",
        ),
        (
            'auth = "oauth2"\n[accounts.oauth2]\nprovider = "google"\nclient_id = "a"\n'
            'timeout = "1h"\n',
            "accounts[0].oauth2.timeout",
            "from 1s to 5m",
        ),
        (
            'auth = "oauth2"\n[accounts.oauth2]\nprovider = "yahoo"\nclient_id = "a"\n',
            "accounts[0].oauth2.provider",
            '"microsoft", "google" or "custom"',
        ),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    assert caught.value.key == key, str(caught.value)
    assert expected in str(caught.value)
    assert str(tmp_path / "c.toml") in str(caught.value)
