"""A real OAuth2 authorisation server on 127.0.0.1, for the tests of OAuth2 sign-in.

Built from Authlib's server parts (the grants, the device authorisation,
introspection and revocation endpoints) under a small Werkzeug WSGI app; it
issues short-lived bearer tokens, and Dovecot's ``oauth2`` passdb checks them
through its RFC 7662 introspection endpoint::

    with OAuthServer() as auth:
        auth.add_client("inbound-mail", secret=None)             # a public client
        dovecot = DovecotServer(root, oauth2_introspection=auth.introspection_url)

Endpoints: ``/token`` (authorization_code with PKCE, refresh_token with
rotation, client_credentials, device_code), ``/authorize`` (approves at once as
:attr:`OAuthServer.user`: the test plays a user who always consents),
``/device_authorization`` and ``/device?user_code=...`` (the page a person
would open; GET approves), ``/introspect`` and ``/revoke``.

Refresh-token rotation follows what Microsoft does: every refresh gives a new
refresh token, and the old one stays valid until its successor has been used
(so a client that crashed before saving the new one can still refresh).

Faults for the tests: :attr:`OAuthServer.token_fault` makes ``/token`` answer
an HTML page (``"html"``), HTTP 500 (``"500"``) or answer late (``"slow"``);
:meth:`OAuthServer.revoke_user` revokes every grant of a user.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, OAuth2Request, TokenMixin, grants
from authlib.oauth2.rfc6749.requests import OAuth2Payload
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc8628 import (
    DeviceAuthorizationEndpoint,
    DeviceCodeGrant,
    DeviceCredentialDict,
)
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from .process import Started

__all__ = ["INTROSPECTION_CLIENT", "OAuthServer"]

INTROSPECTION_CLIENT = ("dovecot", "introspection-secret")
_ALL_GRANTS = (
    "authorization_code",
    "refresh_token",
    "client_credentials",
    DeviceCodeGrant.GRANT_TYPE,
)


@dataclass
class _Client(ClientMixin):  # type: ignore[misc]
    client_id: str
    client_secret: str | None
    scope: str
    app_user: str | None = None  # whose mailbox client_credentials tokens open

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:
            return self.scope
        allowed = set(self.scope.split())
        return " ".join(s for s in scope.split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        # RFC 8252 7.3: a native app's loopback redirect may use any port.
        return redirect_uri.startswith("http://127.0.0.1:")

    def check_client_secret(self, client_secret: str) -> bool:
        return self.client_secret is not None and secrets.compare_digest(
            self.client_secret, client_secret
        )

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.client_secret is None:
            return method == "none"
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        if grant_type == "client_credentials":
            return self.client_secret is not None and self.app_user is not None
        return grant_type in _ALL_GRANTS


@dataclass
class _Token(TokenMixin):  # type: ignore[misc]
    client_id: str
    user: str
    scope: str
    access_token: str
    expires_in: int
    refresh_token: str | None = None
    parent: _Token | None = None
    issued_at: float = field(default_factory=time.time)
    revoked: bool = False  # the whole grant
    refresh_used_by_child: bool = False  # rotation: the successor was used, this one is dead

    def check_client(self, client: _Client) -> bool:
        return self.client_id == client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return time.time() >= self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return self.revoked

    def get_user(self) -> str:
        return self.user


class _Payload(OAuth2Payload):  # type: ignore[misc]
    def __init__(self, request: Request) -> None:
        self._request = request

    @property
    def data(self) -> Any:
        return self._request.values

    @property
    def datalist(self) -> Any:
        return {k: self._request.values.getlist(k) for k in self._request.values}


class _Request(OAuth2Request):  # type: ignore[misc]
    def __init__(self, request: Request) -> None:
        super().__init__(method=request.method, uri=request.url, headers=request.headers)
        self._request = request
        self.payload = _Payload(request)

    @property
    def args(self) -> Any:
        return self._request.args

    @property
    def form(self) -> Any:
        return self._request.form


class _Server(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, owner: OAuthServer) -> None:
        super().__init__()
        self.owner = owner

    def query_client(self, client_id: str) -> _Client | None:
        return self.owner.clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        client: _Client = request.client
        user = request.user or client.app_user
        parent = getattr(request, "refresh_token", None)
        self.owner.tokens.append(
            _Token(
                client_id=client.client_id,
                user=str(user),
                scope=token.get("scope", ""),
                access_token=token["access_token"],
                expires_in=int(token["expires_in"]),
                refresh_token=token.get("refresh_token"),
                parent=parent if isinstance(parent, _Token) else None,
            )
        )

    def create_oauth2_request(self, request: Request) -> _Request:
        return _Request(request)

    def create_json_request(self, request: Request) -> Any:
        raise NotImplementedError

    def handle_response(self, status: int, body: Any, headers: Any) -> Response:
        text = json.dumps(body) if isinstance(body, dict) else body
        return Response(text, status=status, headers=headers)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass


class _AuthorizationCode(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = [
        "client_secret_basic",
        "client_secret_post",
        "none",
    ]

    def save_authorization_code(self, code: str, request: Any) -> None:
        owner: OAuthServer = self.server.owner
        owner.codes[code] = {
            "client_id": request.client.client_id,
            "redirect_uri": request.payload.redirect_uri,
            "scope": request.payload.scope or "",
            "user": request.user,
            "code_challenge": request.payload.data.get("code_challenge"),
            "code_challenge_method": request.payload.data.get("code_challenge_method"),
        }

    def query_authorization_code(self, code: str, client: _Client) -> Any:
        item = self.server.owner.codes.get(code)
        if item and item["client_id"] == client.client_id:
            return _Code(code, item)
        return None

    def delete_authorization_code(self, authorization_code: _Code) -> None:
        self.server.owner.codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code: _Code) -> str:
        return str(authorization_code.item["user"])


class _Code:
    def __init__(self, code: str, item: dict[str, Any]) -> None:
        self.code = code
        self.item = item

    def get_redirect_uri(self) -> str:
        return str(self.item["redirect_uri"])

    def get_scope(self) -> str:
        return str(self.item["scope"])

    def get_nonce(self) -> None:
        return None

    def get_auth_time(self) -> None:
        return None

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None

    @property
    def code_challenge(self) -> str | None:
        return self.item["code_challenge"]  # type: ignore[no-any-return]

    @property
    def code_challenge_method(self) -> str | None:
        return self.item["code_challenge_method"]  # type: ignore[no-any-return]


class _RefreshToken(grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = [
        "client_secret_basic",
        "client_secret_post",
        "none",
    ]
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> _Token | None:
        owner: OAuthServer = self.server.owner
        for token in owner.tokens:
            if token.refresh_token == refresh_token:
                if token.revoked or token.refresh_used_by_child:
                    return None
                return token
        return None

    def authenticate_user(self, refresh_token: _Token) -> str:
        return refresh_token.user

    def revoke_old_credential(self, refresh_token: _Token) -> None:
        owner: OAuthServer = self.server.owner
        owner.refreshes += 1
        # Rotation with a grace: the used token's predecessor dies now that its
        # successor has been used; the used token lives on until its own successor is.
        if refresh_token.parent is not None:
            refresh_token.parent.refresh_used_by_child = True
        if owner.strict_rotation:
            refresh_token.refresh_used_by_child = True


class _ClientCredentials(grants.ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic", "client_secret_post"]


class _DeviceCode(DeviceCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = [
        "client_secret_basic",
        "client_secret_post",
        "none",
    ]

    def query_device_credential(self, device_code: str) -> DeviceCredentialDict | None:
        return self.server.owner.devices.get(device_code)

    def query_user_grant(self, user_code: str) -> tuple[str, bool] | None:
        grants_: dict[str, tuple[str, bool]] = self.server.owner.user_grants
        return grants_.get(user_code)

    def should_slow_down(self, credential: Any) -> bool:
        return False


class _DeviceAuthorization(DeviceAuthorizationEndpoint):  # type: ignore[misc]
    INTERVAL = 1
    EXPIRES_IN = 120

    def get_verification_uri(self) -> str:
        return f"{self.server.owner.url}/device"

    def save_device_credential(self, client_id: str, scope: str, data: dict[str, Any]) -> None:
        self.server.owner.devices[data["device_code"]] = DeviceCredentialDict(
            client_id=client_id, scope=scope, expires_at=time.time() + self.EXPIRES_IN, **data
        )


class _Introspection(IntrospectionEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic", "client_secret_post"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> _Token | None:
        owner: OAuthServer = self.server.owner
        owner.introspections += 1
        return next((t for t in owner.tokens if t.access_token == token_string), None)

    def introspect_token(self, token: _Token) -> dict[str, Any]:
        return {
            "active": True,
            "client_id": token.client_id,
            "token_type": "Bearer",
            "username": token.user,
            "scope": token.scope,
            "exp": int(token.issued_at + token.expires_in),
            "iat": int(token.issued_at),
        }

    def check_permission(self, token: _Token, client: _Client, request: Any) -> bool:
        return bool(client.client_id == INTROSPECTION_CLIENT[0])


class _Revocation(RevocationEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic", "client_secret_post", "none"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> _Token | None:
        owner: OAuthServer = self.server.owner
        return next(
            (t for t in owner.tokens if token_string in (t.access_token, t.refresh_token)), None
        )

    def revoke_token(self, token: _Token, request: Any) -> None:
        self.server.owner.revoke_user(token.user)


class OAuthServer(Started):
    """The server: a context manager that serves on a free port of 127.0.0.1."""

    host = "127.0.0.1"

    def __init__(self, *, access_ttl: int = 3600, user: str = "sms") -> None:
        self.access_ttl = access_ttl
        self.user = user  # who signs in at /authorize and approves at /device
        self.clients: dict[str, _Client] = {}
        self.tokens: list[_Token] = []
        self.codes: dict[str, dict[str, Any]] = {}
        self.devices: dict[str, DeviceCredentialDict] = {}
        self.user_grants: dict[str, tuple[str, bool]] = {}
        self.token_fault: str | None = None
        self.slow_seconds = 5.0
        self.strict_rotation = False
        self.refreshes = 0
        self.introspections = 0
        self.token_requests = 0
        self._lock = threading.Lock()
        self._server = _Server(self)
        self._server.register_token_generator(
            "default",
            BearerTokenGenerator(
                lambda **_: secrets.token_urlsafe(32),
                lambda **_: secrets.token_urlsafe(40),
                lambda client, grant_type: self.access_ttl,
            ),
        )
        self._server.register_grant(_AuthorizationCode, [CodeChallenge(required=True)])
        self._server.register_grant(_RefreshToken)
        self._server.register_grant(_ClientCredentials)
        self._server.register_grant(_DeviceCode)
        self._server.register_endpoint(_DeviceAuthorization)
        self._server.register_endpoint(_Introspection)
        self._server.register_endpoint(_Revocation)
        self.add_client(*INTROSPECTION_CLIENT, scope="")
        self._http = make_server(self.host, 0, self._app, threaded=True)
        self.port = int(self._http.server_port)
        self._thread: threading.Thread | None = None

    # -- set-up and control ----------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    @property
    def introspection_url(self) -> str:
        """With the introspection client's credentials in it, as Dovecot's config takes it."""
        user, password = INTROSPECTION_CLIENT
        return f"http://{user}:{password}@{self.host}:{self.port}/introspect"

    def add_client(
        self,
        client_id: str,
        secret: str | None = None,
        *,
        scope: str = "imap offline_access",
        app_user: str | None = None,
    ) -> None:
        """Register a client; ``app_user`` allows client_credentials for that mailbox."""
        self.clients[client_id] = _Client(client_id, secret, scope, app_user)

    def approve(self, user_code: str, user: str | None = None) -> None:
        """What a person does on the device page: approve ``user_code``."""
        self.user_grants[user_code] = (user or self.user, True)

    def revoke_user(self, user: str) -> None:
        """Revoke every grant and token of ``user`` (an admin's "sign out everywhere")."""
        with self._lock:
            for token in self.tokens:
                if token.user == user:
                    token.revoked = True

    def active_refresh_tokens(self, user: str) -> list[str]:
        return [
            t.refresh_token
            for t in self.tokens
            if t.user == user and t.refresh_token and not t.revoked and not t.refresh_used_by_child
        ]

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
            self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join(10)
            self._thread = None
        self._http.server_close()

    # -- the WSGI app ------------------------------------------------------------------
    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        with self._lock:  # one request at a time: the state is plain Python objects
            response = self._route(request)
        return response(environ, start_response)

    def _route(self, request: Request) -> Response:
        path = request.path
        if path == "/token":
            self.token_requests += 1
            fault = self.token_fault
            if fault == "html":
                return Response("<html><body>Sign in</body></html>", 200, mimetype="text/html")
            if fault == "500":
                return Response("<html>Internal Server Error</html>", 500, mimetype="text/html")
            if fault == "slow":
                self._lock.release()  # others may go on meanwhile
                try:
                    time.sleep(self.slow_seconds)  # the fault itself: a token endpoint that hangs
                finally:
                    self._lock.acquire()
            return self._server.create_token_response(request)  # type: ignore[no-any-return]
        if path == "/authorize":
            grant = self._server.get_consent_grant(request)
            return self._server.create_authorization_response(  # type: ignore[no-any-return]
                request, grant_user=self.user, grant=grant
            )
        if path == "/device_authorization":
            return self._server.create_endpoint_response(  # type: ignore[no-any-return]
                "device_authorization", request
            )
        if path == "/device":
            code = request.args.get("user_code", "")
            if not any(d["user_code"] == code for d in self.devices.values()):
                return Response("unknown code", 404)
            self.approve(code)
            return Response("approved", 200)
        if path == "/introspect":
            return self._server.create_endpoint_response(  # type: ignore[no-any-return]
                "introspection", request
            )
        if path == "/revoke":
            return self._server.create_endpoint_response(  # type: ignore[no-any-return]
                "revocation", request
            )
        return Response("not found", 404)
