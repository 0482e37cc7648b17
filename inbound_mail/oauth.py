"""OAuth2 sign-in for IMAP accounts (Microsoft 365, Gmail, any RFC 6749 provider).

An account with ``auth = "oauth2"`` logs in with a short-lived access token
(SASL XOAUTH2 or OAUTHBEARER, see :mod:`inbound_mail.sources.imap.oauth`).  This
module gets those tokens:

- :class:`TokenSource`: the daemon's side.  It hands out a valid access token,
  refreshing it (``refresh_token`` grant, or ``client_credentials`` for
  Microsoft 365 app-only access) shortly before it expires, or on demand after
  the server refused one.  A grant the provider refuses (``invalid_grant``)
  raises :class:`~inbound_mail.errors.AuthorizationExpiredError`.
- :func:`authorize`: the one-time sign-in of ``inbound-mail auth NAME``: the
  device authorisation grant (RFC 8628; a URL and a code to type) or the
  loopback redirect with PKCE (RFC 8252 / RFC 7636; a listener on 127.0.0.1).
- :class:`TokenStore`: one JSON file per account in the state directory
  (beside the database), 0600, written atomically; a rotated refresh token is
  on disk before the old one is dropped, so a crash at any point keeps a usable
  grant.

The protocol itself (token requests, client authentication, PKCE, error
responses) comes from Authlib's httpx client: a maintained implementation of
each RFC, over the HTTP library the project already uses.  What Authlib's
client does not offer, the device authorisation request (one form POST) and
the loopback listener, is the only hand-written part.

No token or client secret ever appears in a log line, an error or the database.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
import sys
import threading
import time
import warnings
import webbrowser
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from .config.model import AccountConfig, OAuth2Config
from .errors import AuthorizationExpiredError, CredentialError, OAuthError
from .faults import fault_point
from .logs import log_event
from .secrets import read_secret, scrub

__all__ = [
    "AuthFlow",
    "TokenInfo",
    "TokenSource",
    "TokenStore",
    "authorize",
    "default_auth_flow",
    "read_client_secret",
    "token_store_path",
]

_log = logging.getLogger("inbound_mail.oauth")
AuthFlow = Literal["device", "loopback"]
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# A token is renewed this long before it expires (a fifth of its life if that is shorter),
# so a login never races the expiry.
_LEEWAY = 300.0
# Errors of the token endpoint that only a new authorisation fixes (RFC 6749 5.2).
_GRANT_ERRORS = ("invalid_grant", "invalid_client", "unauthorized_client")
_LOOPBACK_WAIT = 600.0  # how long `auth` waits for the browser to come back
_DEVICE_MAX_WAIT = 1800.0


def token_store_path(db_path: Path, account: str) -> Path:
    """Where ``account``'s tokens live: ``<db>.oauth/<account>.json`` beside the database."""
    return db_path.parent / f"{db_path.name}.oauth" / f"{account}.json"


def read_client_secret(account: AccountConfig) -> str | None:
    """The OAuth2 client secret of ``account``, or None for a public client."""
    oauth = _oauth(account)
    if not oauth.has_client_secret:
        return None
    return read_secret(
        f"account {account.name!r}",
        "client_secret",
        file=oauth.client_secret_file,
        env=oauth.client_secret_env,
        credential=oauth.client_secret_credential,
    )


def _configured_refresh_token(account: AccountConfig) -> str | None:
    oauth = _oauth(account)
    if not oauth.has_refresh_token_secret:
        return None
    return read_secret(
        f"account {account.name!r}",
        "refresh_token",
        file=oauth.refresh_token_file,
        env=oauth.refresh_token_env,
        credential=oauth.refresh_token_credential,
    )


def _oauth(account: AccountConfig) -> OAuth2Config:
    if account.oauth2 is None:
        raise CredentialError(f'account {account.name!r} does not use auth = "oauth2"')
    return account.oauth2


# -- the token store -------------------------------------------------------------------------


class TokenStore:
    """One account's tokens, a JSON object in a 0600 file; symlinks are refused."""

    def __init__(self, path: Path, account: str) -> None:
        self.path = path
        self.account = account

    def load(self) -> dict[str, Any] | None:
        """The stored tokens, or None when nothing was stored yet."""
        if self.path.parent.is_symlink():
            raise self._error(f"{self.path.parent} is a symbolic link; refusing to read tokens")
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._error(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        with os.fdopen(fd, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            if not stat.S_ISREG(mode) or mode & 0o077:
                raise self._error(
                    f"{self.path} is not a private file (mode {stat.S_IMODE(mode):04o}); "
                    f"restrict it with: chmod 600 {self.path}"
                )
            data = file.read(1024 * 1024)
        try:
            value = json.loads(data)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise self._error(f"{self.path} is not a token file; remove it and run auth again")
        return value

    def save(self, tokens: Mapping[str, Any]) -> None:
        """Replace the stored tokens atomically: temp file, fsync, rename, fsync the folder.

        A crash before the rename leaves the previous file whole; after it, the new one."""
        directory = self.path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if directory.is_symlink():
                raise self._error(f"{directory} is a symbolic link; refusing to write tokens")
            temp = directory / f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(temp, flags, 0o600)
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(json.dumps(dict(tokens), sort_keys=True).encode("utf-8"))
                    file.flush()
                    os.fsync(file.fileno())
                fault_point("oauth-temp-written")
                if self.path.is_symlink():
                    raise self._error(f"{self.path} is a symbolic link; refusing to replace it")
                os.replace(temp, self.path)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
            fault_point("oauth-renamed")
            _remove_stale_temps(directory, self.path.name)
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise self._error(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def _error(self, problem: str) -> CredentialError:
        return CredentialError(f"account {self.account!r}: token store: {problem}")


def _remove_stale_temps(directory: Path, name: str) -> None:
    """Delete what a killed writer left between write and rename (a token is in it);
    a live process's temporary file is its own business."""
    for stale in directory.glob(f".{name}.*.tmp"):
        pid = stale.name[len(name) + 2 :].split(".")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            stale.unlink(missing_ok=True)
        except OSError:
            continue  # alive, another user's


# -- the daemon's side: valid access tokens ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What ``check`` shows of an account's token (never the token itself)."""

    expires_at: float | None
    scope: str | None
    stored: bool
    refresh_token: bool


class TokenSource:
    """Access tokens for one account, refreshed before they expire.

    Thread-safe; one per account worker, kept across its sessions."""

    def __init__(
        self,
        account: AccountConfig,
        db_path: Path,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.account = account
        self.oauth = _oauth(account)
        self.store = TokenStore(token_store_path(db_path, account.name), account.name)
        self._clock = clock
        self._lock = threading.Lock()

    def access_token(self, *, force: bool = False) -> str:
        """A valid access token; ``force`` gets a new one even if the current one looks
        valid (the IMAP server has just refused it)."""
        with self._lock:
            stored = self.store.load() or {}
            if not force and self._fresh(stored):
                return str(stored["access_token"])
            return str(self._renew(stored)["access_token"])

    def info(self) -> TokenInfo:
        """The stored token's state, without any network request."""
        stored = self.store.load() or {}
        expires = stored.get("expires_at")
        return TokenInfo(
            expires_at=float(expires) if isinstance(expires, int | float) else None,
            scope=stored.get("scope") if isinstance(stored.get("scope"), str) else None,
            stored=bool(stored),
            refresh_token=bool(stored.get("refresh_token")),
        )

    def _fresh(self, stored: Mapping[str, Any]) -> bool:
        expires = stored.get("expires_at")
        lifetime = stored.get("expires_in")
        if not stored.get("access_token") or not isinstance(expires, int | float):
            return False
        leeway = _LEEWAY
        if isinstance(lifetime, int | float) and lifetime > 0:
            leeway = min(leeway, lifetime / 5)
        return bool(expires - leeway > self._clock())

    def _renew(self, stored: Mapping[str, Any]) -> dict[str, Any]:
        secret = read_client_secret(self.account)
        if self.oauth.flow == "client_credentials":
            token = self._request(secret, [], grant_type="client_credentials")
            saved = _stored_form(token, refresh_token=None, now=self._clock())
        else:
            token, used = self._refreshed(secret, stored)
            # The new refresh token (rotation), or the one just used when the provider
            # keeps it: written to disk before anything forgets the old one.
            fault_point("oauth-token-received")
            current = str(token.get("refresh_token") or used)
            saved = _stored_form(token, refresh_token=current, now=self._clock())
        self.store.save(saved)
        log_event(
            _log,
            logging.INFO,
            "oauth.token_refreshed",
            account=self.account.name,
            flow=self.oauth.flow,
            expires_in=f"{saved.get('expires_in', '?')}s",
            rotated=str(saved.get("refresh_token") != stored.get("refresh_token")).lower()
            if self.oauth.flow == "refresh_token"
            else "n/a",
        )
        return saved

    def _refreshed(
        self, secret: str | None, stored: Mapping[str, Any]
    ) -> tuple[dict[str, Any], str]:
        candidates: list[str] = []
        if isinstance(stored.get("refresh_token"), str) and stored["refresh_token"]:
            candidates.append(stored["refresh_token"])
        configured = _configured_refresh_token(self.account)
        if configured and configured not in candidates:
            candidates.append(configured)  # e.g. an administrator put a new one in the file
        if not candidates:
            raise AuthorizationExpiredError(
                f"no refresh token yet: run `inbound-mail auth {self.account.name}`",
                account=self.account.name,
            )
        error: AuthorizationExpiredError | None = None
        for refresh_token in candidates:
            try:
                token = self._request(
                    secret, [refresh_token], grant_type="refresh_token", refresh_token=refresh_token
                )
            except AuthorizationExpiredError as exc:
                error = exc
                continue
            return token, refresh_token
        assert error is not None
        raise error

    def _request(self, secret: str | None, hide: list[str], **params: str) -> dict[str, Any]:
        with oauth_client(self.oauth, secret) as client:
            return fetch_token(client, self.account, self.oauth, secret, hide, **params)


def _stored_form(
    token: Mapping[str, Any], *, refresh_token: str | None, now: float
) -> dict[str, Any]:
    expires_in = token.get("expires_in")
    lifetime = float(expires_in) if isinstance(expires_in, int | float | str) else 3600.0
    saved: dict[str, Any] = {
        "access_token": token["access_token"],
        "token_type": token.get("token_type", "Bearer"),
        "expires_in": lifetime,
        "expires_at": now + lifetime,
        "saved_at": now,
    }
    if isinstance(token.get("scope"), str):
        saved["scope"] = token["scope"]
    if refresh_token:
        saved["refresh_token"] = refresh_token
    return saved


# -- protocol: Authlib's httpx client --------------------------------------------------------------


def oauth_client(oauth: OAuth2Config, secret: str | None, **kwargs: Any) -> Any:
    """An Authlib ``OAuth2Client`` (an httpx.Client) for ``oauth``: TLS verified, the
    config's timeout, the client secret in the form body when there is one."""
    import authlib.deprecate  # noqa: F401  # installs its "always" filter first, so ours wins

    with warnings.catch_warnings():
        # Authlib 1.9 prefers the httpx2 package and warns when it falls back to httpx,
        # which this project uses (and Authlib still supports): not the user's concern.
        warnings.simplefilter("ignore", DeprecationWarning)
        from authlib.integrations.httpx_client import OAuth2Client

    return OAuth2Client(
        client_id=oauth.client_id,
        client_secret=secret,
        token_endpoint_auth_method="client_secret_post" if secret else "none",
        scope=" ".join(oauth.scope),
        timeout=oauth.timeout,
        follow_redirects=False,
        **kwargs,
    )


def fetch_token(
    client: Any,
    account: AccountConfig,
    oauth: OAuth2Config,
    secret: str | None,
    hide: list[str],
    **params: str,
) -> dict[str, Any]:
    """POST to the token endpoint; every failure becomes an :class:`OAuthError` that
    names the endpoint and never holds a secret."""
    from authlib.integrations.base_client import OAuthError as AuthlibError

    http = _http_module(client)
    where = f"token endpoint {oauth.token_url}"
    sent = [params.get(k) for k in ("refresh_token", "device_code", "code", "code_verifier")]
    hidden = [s for s in [secret, *hide, *sent] if s]
    try:
        if params.get("grant_type") == "refresh_token":
            token = client.refresh_token(oauth.token_url, refresh_token=params["refresh_token"])
        else:
            token = client.fetch_token(oauth.token_url, **params)
    except AuthlibError as exc:
        said = scrub(f"{exc.error}: {exc.description or ''}".strip(": "), hidden)
        if exc.error in _GRANT_ERRORS:
            raise AuthorizationExpiredError(
                f"authorization expired ({where} said {_printable(said)}): "
                f"run `inbound-mail auth {account.name}`",
                account=account.name,
            ) from None
        raise OAuthError(f"{where} refused: {_printable(said)}", account=account.name) from None
    except http.TimeoutException:
        raise OAuthError(
            f"{where} did not answer within {oauth.timeout:g} s", account=account.name
        ) from None
    except http.HTTPStatusError as exc:
        raise OAuthError(
            f"{where} answered HTTP {exc.response.status_code} "
            f"({_content_type(exc.response)}): the provider is failing; retrying later",
            account=account.name,
        ) from None
    except http.HTTPError as exc:
        raise OAuthError(
            f"cannot reach {where}: {scrub(str(exc), hidden) or type(exc).__name__}",
            account=account.name,
        ) from None
    except ValueError:
        raise OAuthError(
            f"{where} answered something that is not a JSON token response "
            "(an HTML page?): check token_url",
            account=account.name,
        ) from None
    if not isinstance(token, Mapping) or not isinstance(token.get("access_token"), str):
        raise OAuthError(f"{where} answered without an access_token", account=account.name)
    return dict(token)


def _http_module(client: Any) -> Any:
    """The HTTP library under Authlib's client (httpx, or httpx2 when installed), whose
    exception classes the token requests raise."""
    for base in type(client).__mro__:
        if base.__name__ == "Client" and base.__module__.startswith("httpx"):
            return sys.modules[base.__module__.split(".")[0]]
    import httpx  # here: loaded with Authlib's client, only by accounts that use OAuth2

    return httpx


def _content_type(response: Any) -> str:
    kind = response.headers.get("content-type", "no content type").split(";")[0].strip()
    return _printable(kind)[:60] or "no content type"


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)[:300]


# -- the one-time authorisation: `inbound-mail auth` -----------------------------------------------


def default_auth_flow(oauth: OAuth2Config) -> AuthFlow:
    """Microsoft: the device flow (no browser on the server needed).  Google's device flow
    does not allow the mail scope: the loopback flow.  Custom: device if it has one."""
    if oauth.provider == "google" or not oauth.device_authorization_url:
        return "loopback"
    return "device"


def authorize(
    account: AccountConfig,
    db_path: Path,
    *,
    flow: AuthFlow | None = None,
    echo: Callable[[str], None] = print,
    open_browser: bool = True,
    stop: threading.Event | None = None,
    port: int = 0,
) -> TokenInfo:
    """Sign in once and store the refresh token; returns what was stored.

    ``client_credentials`` accounts need no person: a token is fetched to prove the
    app's secret and permissions work."""
    oauth = _oauth(account)
    stop = stop or threading.Event()
    secret = read_client_secret(account)
    store = TokenStore(token_store_path(db_path, account.name), account.name)
    if oauth.flow == "client_credentials":
        with oauth_client(oauth, secret) as client:
            token = fetch_token(client, account, oauth, secret, [], grant_type="client_credentials")
        refresh = None
    else:
        flow = flow or default_auth_flow(oauth)
        if flow == "device":
            token = _device_flow(account, oauth, secret, echo, stop)
        else:
            token = _loopback_flow(account, oauth, secret, echo, open_browser, stop, port)
        refresh = token.get("refresh_token")
        if not refresh:
            raise OAuthError(
                "the provider gave no refresh token: add the offline_access scope "
                "(Microsoft) or allow offline access (Google)",
                account=account.name,
            )
    store.save(_stored_form(token, refresh_token=refresh, now=time.time()))
    log_event(_log, logging.INFO, "oauth.authorized", account=account.name, flow=oauth.flow)
    return TokenSource(account, db_path).info()


def _device_flow(
    account: AccountConfig,
    oauth: OAuth2Config,
    secret: str | None,
    echo: Callable[[str], None],
    stop: threading.Event,
) -> dict[str, Any]:
    url = oauth.device_authorization_url
    if not url:
        raise OAuthError(
            "no device_authorization_url for this account: use the loopback flow (--flow loopback)",
            account=account.name,
        )
    form = {"client_id": oauth.client_id, "scope": " ".join(oauth.scope)}
    if secret:
        form["client_secret"] = secret
    with oauth_client(oauth, secret) as client:
        try:
            response = client.request("POST", url, data=form, withhold_token=True)
            grant = response.json()
        except _http_module(client).HTTPError as exc:
            raise OAuthError(f"cannot reach {url}: {exc}", account=account.name) from None
        except ValueError:
            raise OAuthError(
                f"{url} answered HTTP {response.status_code} without JSON", account=account.name
            ) from None
        if (
            response.status_code != 200
            or not isinstance(grant, dict)
            or not all(isinstance(grant.get(k), str) for k in ("device_code", "user_code"))
        ):
            said = grant.get("error", "?") if isinstance(grant, dict) else "?"
            raise OAuthError(
                f"{url} refused the device authorisation (HTTP {response.status_code}, "
                f"{_printable(str(said))})",
                account=account.name,
            )
        where = grant.get("verification_uri") or grant.get("verification_url")
        echo(
            f"To authorise account {account.name!r}, open {where} in a browser and enter the "
            f"code {grant['user_code']}"
        )
        interval = _number(grant.get("interval"), 5.0, 1.0, 60.0)
        deadline = time.monotonic() + _number(grant.get("expires_in"), 900.0, 1, _DEVICE_MAX_WAIT)
        while time.monotonic() < deadline:
            if stop.wait(interval):
                raise OAuthError("authorisation interrupted", account=account.name)
            try:
                return fetch_token(
                    client,
                    account,
                    oauth,
                    secret,
                    [],
                    grant_type=DEVICE_GRANT,
                    device_code=grant["device_code"],
                )
            except OAuthError as exc:
                if "authorization_pending" in exc.reason:
                    continue
                if "slow_down" in exc.reason:
                    interval += 5  # RFC 8628 3.5
                    continue
                raise
    raise OAuthError(
        "the code expired before the sign-in was completed; run auth again",
        account=account.name,
    )


def _number(value: object, default: float, low: float, high: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(min(max(value, low), high))
    return default


def _loopback_flow(
    account: AccountConfig,
    oauth: OAuth2Config,
    secret: str | None,
    echo: Callable[[str], None],
    open_browser: bool,
    stop: threading.Event,
    port: int,
) -> dict[str, Any]:
    from authlib.common.security import generate_token

    if not oauth.authorization_url:
        raise OAuthError(
            "no authorization_url for this account: set it, or use the device flow",
            account=account.name,
        )
    listener = _Listener(port)
    try:
        redirect_uri = f"http://127.0.0.1:{listener.port}/"
        verifier = generate_token(64)
        extra = (
            {"access_type": "offline", "prompt": "consent"} if oauth.provider == "google" else {}
        )
        with oauth_client(
            oauth, secret, redirect_uri=redirect_uri, code_challenge_method="S256"
        ) as client:
            url, state = client.create_authorization_url(
                oauth.authorization_url, code_verifier=verifier, **extra
            )
            echo(f"To authorise account {account.name!r}, open this URL in a browser:\n{url}")
            if open_browser:
                webbrowser.open(url)
            answer = listener.wait(stop, _LOOPBACK_WAIT)
            params = parse_qs(urlsplit(answer).query)
            if params.get("state", [""])[0] != state:
                raise OAuthError(
                    "the browser came back with a wrong state (a forged redirect?): run auth again",
                    account=account.name,
                )
            if "error" in params:
                raise OAuthError(
                    f"the provider refused: {_printable(params['error'][0])}",
                    account=account.name,
                )
            code = params.get("code", [""])[0]
            if not code:
                raise OAuthError("the browser came back without a code", account=account.name)
            return fetch_token(
                client,
                account,
                oauth,
                secret,
                [],
                grant_type="authorization_code",
                code=code,
                code_verifier=verifier,
                redirect_uri=redirect_uri,
            )
    finally:
        listener.close()


class _Listener:
    """A one-shot HTTP listener on 127.0.0.1 that catches the provider's redirect."""

    def __init__(self, port: int) -> None:
        import http.server  # here: only `inbound-mail auth` listens; the daemon never does

        self.answer: str | None = None
        self.arrived = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if outer.answer is None and "state=" in self.path:
                    outer.answer = self.path
                    outer.arrived.set()
                body = b"inbound-mail: authorisation received; you may close this window.\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the query holds the authorisation code: never printed

        self.server = http.server.HTTPServer(("127.0.0.1", port), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, stop: threading.Event, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while not self.arrived.wait(0.2):
            if stop.is_set() or time.monotonic() > deadline:
                raise OAuthError("no answer from the browser; run auth again")
        assert self.answer is not None
        return self.answer

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
