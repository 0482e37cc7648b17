"""Reading secrets (IMAP passwords, webhook signing keys) from where the config says.

Three places, one per ``*_file`` / ``*_env`` / ``*_credential`` key
(``accounts[].password_file``, ``sinks[].secret_env``, ...):

- a file only its owner may read (``chmod 600``);
- an environment variable;
- a systemd credential, ``$CREDENTIALS_DIRECTORY/NAME``, provided by
  ``LoadCredential=NAME:/path`` in the unit.

Every problem raises :class:`~inbound_mail.errors.CredentialError` with what to
do about it; no message ever contains the secret.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .config import AccountConfig
from .errors import CredentialError

__all__ = ["read_password", "read_secret"]


def read_password(account: AccountConfig) -> str:
    """The password of ``account``, from its file, variable or systemd credential."""
    return read_secret(
        f"account {account.name!r}",
        "password",
        file=account.password_file,
        env=account.password_env,
        credential=account.password_credential,
    )


def read_secret(
    owner: str,
    what: str,
    *,
    file: Path | None = None,
    env: str | None = None,
    credential: str | None = None,
) -> str:
    """A secret from the first of ``file``, ``env`` and ``credential`` that is set.

    ``owner`` (``"account 'main'"``) starts every error message; ``what``
    (``"password"``) names the keys (``password_file``, ...) in them.
    """
    if file is not None:
        return _from_file(owner, what, file)
    if env is not None:
        return _from_env(owner, what, env)
    if credential is not None:
        return _from_credential(owner, what, credential)
    raise _error(owner, f"no {what} configured: set {what}_file, {what}_env or {what}_credential")


def _from_file(owner: str, what: str, path: Path) -> str:
    try:
        with path.open("rb") as file:
            # Checked on the open file, so a swap between check and read cannot fool it.
            mode = os.fstat(file.fileno()).st_mode
            if mode & 0o077:
                raise _error(
                    owner,
                    f"{what} file {path} is readable by others (mode "
                    f"{stat.S_IMODE(mode):04o}); restrict it with: chmod 600 {path}",
                )
            data = file.read()
    except CredentialError:
        raise
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise _error(owner, f"cannot read {what} file {path}: {reason}") from exc
    return _decode(owner, data, f"{what} file {path}")


def _from_env(owner: str, what: str, name: str) -> str:
    value = os.environ.get(name)
    if not value:
        state = "empty" if value == "" else "not set"
        raise _error(owner, f"environment variable {name} ({what}_env) is {state}")
    return value


def _from_credential(owner: str, what: str, name: str) -> str:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    hint = f"add LoadCredential={name}:/path/to/{what} to the service unit"
    if not directory:
        raise _error(
            owner,
            f"{what}_credential = {name!r} needs systemd's credentials, but "
            f"CREDENTIALS_DIRECTORY is not set; {hint}",
        )
    if not name or "/" in name or name in {".", ".."}:
        raise _error(owner, f"{what}_credential {name!r} is not a plain credential name")
    path = Path(directory) / name
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise _error(
            owner, f"cannot read credential {name!r} from {directory}: {reason}; {hint}"
        ) from exc
    return _decode(owner, data, f"credential {name!r}")


def _decode(owner: str, data: bytes, where: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None:
        # Raised outside the except block: the decode error, even as a suppressed
        # __context__, holds the secret's bytes.
        raise _error(owner, f"{where} is not valid UTF-8")
    # Editors and `echo` add a final newline that is not part of the password.
    for newline in ("\r\n", "\n"):
        if text.endswith(newline):
            text = text[: -len(newline)]
            break
    if not text:
        raise _error(owner, f"{where} is empty")
    return text


def _error(owner: str, problem: str) -> CredentialError:
    return CredentialError(f"{owner}: {problem}")
