"""read_password(): files with safe modes, environment variables, systemd credentials,
and errors that say what to do without ever showing the secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inbound_mail.config.model import AccountConfig
from inbound_mail.errors import CredentialError
from inbound_mail.secrets import read_password

SECRET = "hunter2-Sup3r-s3cret"


def _account(**source: Any) -> AccountConfig:
    return AccountConfig(name="shop", host="imap.example.com", username="sms", **source)


def _secret_file(tmp_path: Path, content: bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "password"
    path.write_bytes(content)
    path.chmod(mode)
    return path


def _all_text(exc: BaseException) -> str:
    """The error and every exception chained to it, as a traceback would show them."""
    parts = []
    current: BaseException | None = exc
    while current is not None:
        parts.append(f"{current!s} {current!r}")
        current = current.__cause__ or current.__context__
    return " ".join(parts)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (SECRET.encode(), SECRET),
        (SECRET.encode() + b"\n", SECRET),
        (SECRET.encode() + b"\r\n", SECRET),
        (SECRET.encode() + b"\n\n", SECRET + "\n"),  # only one newline is the file's
        (b" spaced secret ", " spaced secret "),
    ],
)
def test_a_0600_file_is_read_without_one_trailing_newline(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    path = _secret_file(tmp_path, content)

    assert read_password(_account(password_file=path)) == expected


def test_a_0400_file_is_accepted(tmp_path: Path) -> None:
    path = _secret_file(tmp_path, SECRET.encode(), mode=0o400)

    assert read_password(_account(password_file=path)) == SECRET


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604, 0o660, 0o606])
def test_a_file_others_can_read_is_refused_with_the_chmod_fix(tmp_path: Path, mode: int) -> None:
    path = _secret_file(tmp_path, SECRET.encode(), mode=mode)

    with pytest.raises(CredentialError) as caught:
        read_password(_account(password_file=path))

    message = str(caught.value)
    assert f"chmod 600 {path}" in message
    assert f"{mode:04o}" in message
    assert "'shop'" in message
    assert SECRET not in _all_text(caught.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere"

    with pytest.raises(CredentialError, match=f"cannot read password file {path}"):
        read_password(_account(password_file=path))


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    path = _secret_file(tmp_path, b"\n")

    with pytest.raises(CredentialError, match="is empty"):
        read_password(_account(password_file=path))


def test_a_file_that_is_not_utf8_never_shows_its_bytes(tmp_path: Path) -> None:
    path = _secret_file(tmp_path, b"\xff\xfe" + SECRET.encode())

    with pytest.raises(CredentialError, match="not valid UTF-8") as caught:
        read_password(_account(password_file=path))

    text = _all_text(caught.value)
    assert SECRET not in text
    assert "\\xff" not in text and "0xff" not in text


def test_the_environment_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_IMAP_PASSWORD", SECRET)

    assert read_password(_account(password_env="SHOP_IMAP_PASSWORD")) == SECRET


@pytest.mark.parametrize(("value", "state"), [(None, "not set"), ("", "empty")])
def test_a_missing_or_empty_variable_is_named(
    monkeypatch: pytest.MonkeyPatch, value: str | None, state: str
) -> None:
    if value is None:
        monkeypatch.delenv("SHOP_IMAP_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("SHOP_IMAP_PASSWORD", value)

    with pytest.raises(CredentialError) as caught:
        read_password(_account(password_env="SHOP_IMAP_PASSWORD"))

    assert f"SHOP_IMAP_PASSWORD (password_env) is {state}" in str(caught.value)


def test_a_systemd_credential_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "imap-shop").write_text(SECRET + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))

    assert read_password(_account(password_credential="imap-shop")) == SECRET


def test_a_credential_without_systemd_explains_load_credential(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)

    with pytest.raises(CredentialError) as caught:
        read_password(_account(password_credential="imap-shop"))

    message = str(caught.value)
    assert "CREDENTIALS_DIRECTORY is not set" in message
    assert "LoadCredential=imap-shop:" in message


def test_a_missing_credential_explains_load_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))

    with pytest.raises(CredentialError) as caught:
        read_password(_account(password_credential="imap-shop"))

    message = str(caught.value)
    assert f"cannot read credential 'imap-shop' from {tmp_path}" in message
    assert "LoadCredential=imap-shop:" in message


@pytest.mark.parametrize("name", ["../password", "a/b", ".."])
def test_a_credential_name_cannot_leave_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    (tmp_path / "password").write_text(SECRET)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))

    with pytest.raises(CredentialError, match="not a plain credential name"):
        read_password(_account(password_credential=name))


def test_no_source_configured_says_which_keys_exist() -> None:
    with pytest.raises(CredentialError, match="password_file, password_env or password_credential"):
        read_password(_account())
