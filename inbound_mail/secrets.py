"""Reading secrets (IMAP passwords, webhook signing keys) from where the config says.

Three places, one per ``*_file`` / ``*_env`` / ``*_credential`` key
(``accounts[].password_file``, ``sinks[].secret_env``, ...):

- a file only its owner may read (``chmod 600``);
- an environment variable;
- a systemd credential, ``$CREDENTIALS_DIRECTORY/NAME``, provided by
  ``LoadCredential=NAME:/path`` in the unit.

Every problem raises :class:`~inbound_mail.errors.CredentialError` with what to
do about it; no message ever contains the secret.

Secrets in URLs have one redaction, :func:`redact_url`, used wherever a URL is
shown (errors, logs, ``check``, stored attempts); :func:`url_secrets` lists
what it hides (plus the ``Authorization: Basic`` form of the userinfo, which a
receiver may echo) so that :func:`scrub` can remove them from any other text.
"""

from __future__ import annotations

import base64
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from .config.model import AccountConfig, Config
from .errors import CredentialError

__all__ = [
    "REDACTED",
    "exposed_secrets_warning",
    "inline_secret_keys",
    "read_password",
    "read_secret",
    "redact_url",
    "scrub",
    "url_secrets",
]

REDACTED = "***"
# Opaque path segments of webhook URLs (Slack, Discord, ...) are bearer tokens.
_SECRET_SEGMENT = re.compile(
    r"^(?=[A-Za-z0-9_-]*[A-Za-z])(?=[A-Za-z0-9_-]*[0-9])[A-Za-z0-9_-]{16,}$"
)


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


def redact_url(url: str) -> str:
    """``url`` safe for logs and stored errors: credentials replaced with ``***``.

    Redacted: the userinfo (``user:pass@``), the value of EVERY query parameter
    (``?code=``, ``?jwt=``, ``?k=``: a name does not tell a credential), opaque
    path segments of 16+ letters and digits (the shape of the tokens that
    Slack- or Discord-style webhook URLs carry in their path) and the
    fragment, which is never sent anyway.  Parameter names stay, to tell URLs apart.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return REDACTED  # unparseable: it cannot be shown safely
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{REDACTED}@{host}{port}" if "@" in parts.netloc else parts.netloc
    path = "/".join(
        REDACTED if _SECRET_SEGMENT.match(segment) else segment for segment in parts.path.split("/")
    )
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, REDACTED if v else v) for k, v in pairs], safe="*", quote_via=quote)
    fragment = REDACTED if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, path, query, fragment))


def url_secrets(url: str) -> set[str]:
    """What :func:`redact_url` hides, as it may appear in other text: each part
    raw and percent-decoded, and ``base64(user:password)``, the
    ``Authorization: Basic`` header that HTTP clients send for the userinfo."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return {url}
    found = {parts.username or "", parts.password or "", parts.fragment}
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        found.add(userinfo)
        user, _, password = userinfo.partition(":")
        for pair in {f"{user}:{password}", f"{unquote(user)}:{unquote(password)}"}:
            for encoding in ("utf-8", "latin-1"):
                try:
                    found.add(base64.b64encode(pair.encode(encoding)).decode("ascii"))
                except UnicodeEncodeError:
                    continue
    for raw in parts.query.split("&"):
        value = raw.partition("=")[2]
        found.update((value, unquote(value.replace("+", " "))))
    found.update(s for s in parts.path.split("/") if _SECRET_SEGMENT.match(s))
    found.update({unquote(s) for s in found})
    found.discard("")
    return found


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every one of ``secrets`` replaced by ``***``, longest first
    (so that a secret containing another is replaced whole)."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = text.replace(secret, REDACTED)
    return text


# Sink options that hold a credential when set inline in the config file.
_INLINE_SECRET_OPTIONS = ("secret", "headers", "env")


def inline_secret_keys(config: Config) -> list[str]:
    """The keys of ``config`` that hold a secret inline: a sink's ``secret``,
    ``headers`` or ``env`` values, and URLs with credentials or a query string."""
    keys = []
    for sink in config.sinks:
        for option in _INLINE_SECRET_OPTIONS:
            if sink.options.get(option):
                keys.append(sink.key(option))
        url = sink.options.get("url")
        if isinstance(url, str) and url_secrets(url):
            keys.append(sink.key("url"))
    return keys


def exposed_secrets_warning(config: Config) -> str | None:
    """What to fix when the config file holds secrets inline and group or others
    may read it; None when it is private, holds none, or there is no file."""
    if config.path is None:
        return None
    keys = inline_secret_keys(config)
    if not keys:
        return None
    try:
        mode = os.stat(config.path).st_mode
    except OSError:
        return None  # it was read a moment ago; a vanished file is not this check's news
    if not mode & 0o077:
        return None
    return (
        f"{config.path} is readable by group or others (mode {stat.S_IMODE(mode):04o}) and "
        f"holds secrets inline ({', '.join(keys)}): chmod 600 {config.path}, or move them "
        "to secret_file / secret_credential"
    )
