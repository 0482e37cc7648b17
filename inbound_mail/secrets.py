"""Reading an account's IMAP password from where the config says it lives.

Three places, one per ``accounts[].password_*`` key:

- ``password_file``: a file only its owner may read (``chmod 600``);
- ``password_env``: an environment variable;
- ``password_credential``: a systemd credential, ``$CREDENTIALS_DIRECTORY/NAME``,
  provided by ``LoadCredential=NAME:/path`` in the unit.

Every problem raises :class:`~inbound_mail.errors.CredentialError` with what to
do about it; no message ever contains the secret.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .config import AccountConfig
from .errors import CredentialError

__all__ = ["read_password"]


def read_password(account: AccountConfig) -> str:
    """The password of ``account``, from its file, variable or systemd credential."""
    if account.password_file is not None:
        return _from_file(account, account.password_file)
    if account.password_env is not None:
        return _from_env(account, account.password_env)
    if account.password_credential is not None:
        return _from_credential(account, account.password_credential)
    raise _error(
        account,
        "no password configured: set password_file, password_env or password_credential",
    )


def _from_file(account: AccountConfig, path: Path) -> str:
    try:
        with path.open("rb") as file:
            # Checked on the open file, so a swap between check and read cannot fool it.
            mode = os.fstat(file.fileno()).st_mode
            if mode & 0o077:
                raise _error(
                    account,
                    f"password file {path} is readable by others (mode "
                    f"{stat.S_IMODE(mode):04o}); restrict it with: chmod 600 {path}",
                )
            data = file.read()
    except CredentialError:
        raise
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise _error(account, f"cannot read password file {path}: {reason}") from exc
    return _decode(account, data, f"password file {path}")


def _from_env(account: AccountConfig, name: str) -> str:
    value = os.environ.get(name)
    if not value:
        state = "empty" if value == "" else "not set"
        raise _error(account, f"environment variable {name} (password_env) is {state}")
    return value


def _from_credential(account: AccountConfig, name: str) -> str:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    hint = f"add LoadCredential={name}:/path/to/password to the service unit"
    if not directory:
        raise _error(
            account,
            f"password_credential = {name!r} needs systemd's credentials, but "
            f"CREDENTIALS_DIRECTORY is not set; {hint}",
        )
    if not name or "/" in name or name in {".", ".."}:
        raise _error(account, f"password_credential {name!r} is not a plain credential name")
    path = Path(directory) / name
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise _error(
            account, f"cannot read credential {name!r} from {directory}: {reason}; {hint}"
        ) from exc
    return _decode(account, data, f"credential {name!r}")


def _decode(account: AccountConfig, data: bytes, where: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None:
        # Raised outside the except block: the decode error, even as a suppressed
        # __context__, holds the secret's bytes.
        raise _error(account, f"{where} is not valid UTF-8")
    # Editors and `echo` add a final newline that is not part of the password.
    for newline in ("\r\n", "\n"):
        if text.endswith(newline):
            text = text[: -len(newline)]
            break
    if not text:
        raise _error(account, f"{where} is empty")
    return text


def _error(account: AccountConfig, problem: str) -> CredentialError:
    return CredentialError(f"account {account.name!r}: {problem}")
