"""The ``webhook`` sink: one HTTP POST per record.

Two body formats:

``agile`` (default)
    The provider's own HTTP POST contract: a form-encoded body with exactly
    ``originator``, ``destination``, ``date_time`` and ``text``, and success only
    on a 2xx whose body contains ``+OK`` (``success_body``).  Every receiver
    written for the provider's webhook takes messages that came by email, unchanged.
``json``
    ``record.to_dict()`` as JSON with Standard Webhooks headers: ``webhook-id``
    (the SMS id, stable across resends), ``webhook-timestamp`` and, with a
    ``secret``, ``webhook-signature``.  Success on any 2xx.

Both formats send ``X-Inbound-Mail-Id: <sms id>`` for deduplication (a header
does not disturb form receivers) and, when a secret is set (``secret``, or
``secret_file`` / ``secret_env`` / ``secret_credential``), the Standard
Webhooks signature headers.  Outcomes: 2xx is delivered; 3xx is permanent
(redirects are never followed: the config should name the final URL); 408,
429, 5xx, timeouts and connection errors are temporary, honouring
``Retry-After``; any other 4xx is permanent.  Credentials in the URL and the
values of ``headers`` and ``secret`` never appear in errors or log lines.

``timeout`` is one wall-clock deadline for the whole attempt, from connect to
the last byte read: a receiver that trickles its answer a byte at a time is
cut at ``timeout`` like one that never answers (httpx's own timeouts are per
read, so every read is given only what is left of the attempt's deadline).

httpx is used with one keep-alive ``Client`` per sink: it follows no redirect
unless asked, and its errors form one tree that maps cleanly onto temporary
and permanent failures.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import ssl
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlencode, urlsplit

import httpcore
import httpx

from .. import __version__
from ..errors import PermanentDeliveryError, TemporaryDeliveryError
from ..secrets import read_secret, redact_url, scrub, url_secrets
from ..tls import client_context
from . import SinkOptions, record_json

if TYPE_CHECKING:
    from ..config.model import SinkConfig
    from ..models import SmsRecord
    from . import DeliveryContext

__all__ = ["WebhookSink", "parse_retry_after"]

Format = Literal["agile", "json"]
_FORMATS = ("agile", "json")
AGILE_FIELDS = ("originator", "destination", "date_time", "text")
_BODY_LIMIT = 64 * 1024  # enough to find +OK; a huge answer is not read to the end
_EXCERPT = 200
_CONNECT_TIMEOUT_CAP = 10.0  # a host that drops SYNs should fail fast, not after 30 s
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_OWN_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "transfer-encoding",
        "host",
        "connection",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "x-inbound-mail-id",
    }
)
_THIRD_PARTY_LOGGERS = (
    "httpx",
    *(f"httpcore.{name}" for name in ("connection", "http11", "http2", "proxy", "socks")),
)
_TIMEOUT_PHASE = {
    httpx.ConnectTimeout: "connecting",
    httpx.WriteTimeout: "sending the request",
    httpx.ReadTimeout: "waiting for the response",
    httpx.PoolTimeout: "waiting for a free connection",
}


class _Deadline(threading.local):
    """The current attempt's deadline (``time.monotonic()``), per delivering thread."""

    at: float | None = None

    def left(self, timeout: float | None) -> float | None:
        """What a read or write may still take: ``timeout`` cut to the time left."""
        if self.at is None:
            return timeout
        left = self.at - time.monotonic()
        return left if timeout is None else min(timeout, left)

    def passed(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at


_DEADLINE = _Deadline()


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the attempt's deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        left = _DEADLINE.left(timeout)
        if left is not None and left <= 0:
            raise httpcore.ReadTimeout("the attempt's deadline passed")
        return self._stream.read(max_bytes, left)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        left = _DEADLINE.left(timeout)
        if left is not None and left <= 0:
            raise httpcore.WriteTimeout("the attempt's deadline passed")
        self._stream.write(buffer, left)

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = _DEADLINE.left(timeout)
        if left is not None and left <= 0:
            raise httpcore.ConnectTimeout("the attempt's deadline passed")
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> object:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.SyncBackend):
    """httpcore's own sockets, wrapped in :class:`_DeadlineStream`."""

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        left = _DEADLINE.left(timeout)
        if left is not None and left <= 0:
            raise httpcore.ConnectTimeout("the attempt's deadline passed")
        stream = super().connect_tcp(host, port, left, local_address, socket_options)
        return _DeadlineStream(stream)


def _deadline_transport(verify: ssl.SSLContext | bool, limits: httpx.Limits) -> httpx.HTTPTransport:
    transport = httpx.HTTPTransport(verify=verify, limits=limits, http1=True, http2=False)
    # httpx has no public way to give its transport a network backend: replace
    # the pool it built with the same one plus ours (httpcore's API is public).
    transport._pool = httpcore.ConnectionPool(
        ssl_context=verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        http1=True,
        http2=False,
        network_backend=_DeadlineBackend(),
    )
    return transport


_URL_IN_TEXT = re.compile(r"(?i)\bhttps?://[^\s'\"<>]+")


class _ScrubSecrets(logging.Filter):
    """Keeps URLs and secrets out of httpx's and httpcore's own log lines.

    httpx logs every request URL at INFO; httpcore logs response headers (a
    ``Location`` may echo a token) at DEBUG.  Each sink registers its secrets.
    """

    secrets: tuple[str, ...] = ()  # replaced whole, never mutated: safe across threads
    _lock = threading.Lock()

    @classmethod
    def register(cls, secrets: list[str]) -> None:
        with cls._lock:
            merged = set(cls.secrets) | set(secrets)
            cls.secrets = tuple(sorted(merged, key=len, reverse=True))

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, httpx.URL) for a in record.args):
            record.args = tuple(
                redact_url(str(a)) if isinstance(a, httpx.URL) else a for a in record.args
            )
        message = record.getMessage()
        # Any URL in the line (a Location header may carry a token we never saw).
        scrubbed = _URL_IN_TEXT.sub(lambda m: redact_url(m.group()), message)
        scrubbed = scrub(scrubbed, self.secrets)
        if scrubbed != message:
            record.msg, record.args = scrubbed, ()
        return True


def _install_log_filter() -> None:
    for name in _THIRD_PARTY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _ScrubSecrets) for f in logger.filters):
            logger.addFilter(_ScrubSecrets())


_install_log_filter()


class WebhookSink:
    """POSTs each record to ``url``; see the module docstring for the formats."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        format: Format = "agile",
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        secret: str | None = None,
        success_body: str | None = None,
        ca_file: str | Path | None = None,
        max_connections: int = 10,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``success_body=None`` means the format's default (``+OK`` for agile,
        none for json); ``""`` accepts any 2xx body.  ``ca_file``: trust this CA
        bundle instead of the system's (a private CA); verification stays on."""
        _check_url(url)
        _check_headers(headers or {})
        self.name = name
        self.url = url
        self.format: Format = format
        self.timeout = timeout
        self._key = _decode_secret(secret) if secret is not None else None
        self._success = success_body if success_body is not None else _default_success(format)
        self._secrets = _secret_strings(url, headers or {}, secret)
        _ScrubSecrets.register(self._secrets)
        limits = httpx.Limits(max_connections=max_connections)
        verify = _tls_context(ca_file) if ca_file is not None else True
        self._client = httpx.Client(
            headers={"User-Agent": f"inbound-mail/{__version__}", **(headers or {})},
            timeout=httpx.Timeout(timeout, connect=min(timeout, _CONNECT_TIMEOUT_CAP)),
            limits=limits,
            follow_redirects=False,
            verify=verify,
            http1=True,
            http2=False,
            transport=transport if transport is not None else _deadline_transport(verify, limits),
        )

    @classmethod
    def from_config(cls, config: SinkConfig) -> WebhookSink:
        """Build from ``[[sinks]]`` options: url, format, timeout, headers, secret (or
        secret_file / secret_env / secret_credential), success_body, ca_file."""
        opts = SinkOptions(config)
        url = opts.required_str("url")
        fmt: Format = "json" if opts.choice("format", _FORMATS, "agile") == "json" else "agile"
        timeout = opts.duration("timeout", 30.0)
        headers = opts.str_table("headers")
        secret = _secret_option(opts, config.name)
        success_body = opts.optional_str("success_body")
        ca_file = opts.path("ca_file") if opts.optional_str("ca_file") is not None else None
        opts.finish()
        for option, check in (
            ("url", lambda: _check_url(url)),
            ("headers", lambda: _check_headers(headers)),
            ("secret", lambda: secret is None or _decode_secret(secret)),
            ("ca_file", lambda: ca_file is None or _tls_context(ca_file)),
        ):
            try:
                check()
            except ValueError as exc:
                raise opts.error(option, str(exc)) from None
        return cls(
            config.name,
            url,
            format=fmt,
            timeout=timeout,
            headers=headers,
            secret=secret,
            success_body=success_body,
            ca_file=ca_file,
            max_connections=max(config.parallel, 1),
        )

    def __repr__(self) -> str:
        return f"WebhookSink({self.name!r}, {redact_url(self.url)!r}, format={self.format!r})"

    def deliver(self, record: SmsRecord, context: DeliveryContext) -> str | None:
        """POST the record; return ``HTTP <status>`` or raise a DeliveryError."""
        body, content_type = self._encode(record)
        headers = self._headers(record, body, content_type)
        _DEADLINE.at = time.monotonic() + self.timeout
        try:
            with self._client.stream("POST", self.url, content=body, headers=headers) as response:
                head = _read_head(response)
        except httpx.TimeoutException as exc:
            phase = _TIMEOUT_PHASE.get(type(exc), "waiting")
            raise TemporaryDeliveryError(f"timed out {phase} (timeout {self.timeout:g}s)") from exc
        except httpx.HTTPError as exc:  # connection refused/reset, TLS, protocol errors
            raise TemporaryDeliveryError(self._scrub(_http_error_text(exc))) from exc
        finally:
            _DEADLINE.at = None
        return self._judge(response, head)

    def flush(self) -> None:
        """Nothing to do: a 2xx is the receiver's acknowledgement."""

    def close(self) -> None:
        """Close the keep-alive connections."""
        self._client.close()

    def _encode(self, record: SmsRecord) -> tuple[bytes, str]:
        if self.format == "json":
            return record_json(record).encode("utf-8"), "application/json"
        fields = [(name, getattr(record, name)) for name in AGILE_FIELDS]
        form = urlencode(fields, encoding="utf-8", errors="replace")
        return form.encode("ascii"), "application/x-www-form-urlencoded"

    def _headers(self, record: SmsRecord, body: bytes, content_type: str) -> dict[str, str]:
        headers = {"Content-Type": content_type, "X-Inbound-Mail-Id": record.id}
        if self.format == "json" or self._key is not None:
            timestamp = str(int(time.time()))
            headers["webhook-id"] = record.id
            headers["webhook-timestamp"] = timestamp
            if self._key is not None:
                signed = f"{record.id}.{timestamp}.".encode() + body
                digest = hmac.new(self._key, signed, hashlib.sha256).digest()
                headers["webhook-signature"] = "v1," + base64.b64encode(digest).decode("ascii")
        return headers

    def _judge(self, response: httpx.Response, head: bytes) -> str:
        status = response.status_code
        summary = f"HTTP {status} {response.reason_phrase}".rstrip()
        if 200 <= status < 300:
            if self._success and self._success.encode("utf-8") not in head:
                raise TemporaryDeliveryError(
                    f"{summary} without {self._success!r} in the body: {self._excerpt(head)}"
                )
            return f"HTTP {status}"
        if 300 <= status < 400:
            location = redact_url(response.headers.get("location", "(no Location)"))
            raise PermanentDeliveryError(
                f"{summary}: redirect to {location} not followed; configure the final URL"
            )
        if 400 <= status < 500 and status not in (408, 429):
            raise PermanentDeliveryError(f"{summary}: {self._excerpt(head)}")
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        raise TemporaryDeliveryError(f"{summary}: {self._excerpt(head)}", retry_after=retry_after)

    def _excerpt(self, body: bytes) -> str:
        text = " ".join(body[: _EXCERPT * 4].decode("utf-8", "replace").split())
        text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group()), self._scrub(text))
        return text[:_EXCERPT] + ("..." if len(text) > _EXCERPT else "") if text else "(empty body)"

    def _scrub(self, text: str) -> str:
        return scrub(text, self._secrets)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": HTTP dates are GMT by definition
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _read_head(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        if _DEADLINE.passed():
            # Our network backend already ends reads there; an injected transport may not.
            raise httpx.ReadTimeout("the attempt's deadline passed")
        chunks.append(chunk)
        size += len(chunk)
        if size >= _BODY_LIMIT:
            break
    return b"".join(chunks)[:_BODY_LIMIT]


def _http_error_text(exc: httpx.HTTPError) -> str:
    kinds: dict[type[httpx.HTTPError], str] = {
        httpx.ConnectError: "connection failed",
        httpx.ReadError: "connection lost reading the response",
        httpx.WriteError: "connection lost sending the request",
        httpx.RemoteProtocolError: "protocol error",
    }
    kind = kinds.get(type(exc), type(exc).__name__)
    return f"{kind}: {exc}" if str(exc) else kind


def _default_success(fmt: Format) -> str:
    return "+OK" if fmt == "agile" else ""


def _check_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise ValueError("expected an http:// or https:// URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL with a host")


def _check_headers(headers: Mapping[str, str]) -> None:
    for name, value in headers.items():
        if not _HEADER_NAME.match(name):
            raise ValueError(f"expected HTTP header names; {name!r} is not one")
        if name.lower() in _OWN_HEADERS:
            raise ValueError(f"expected headers other than {name!r}, which the sink sets itself")
        if any(c in value for c in "\r\n\0"):
            raise ValueError(f"expected header values without line breaks ({name!r})")


def _tls_context(ca_file: str | Path) -> ssl.SSLContext:
    try:
        return client_context(ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"expected a readable PEM CA bundle ({exc})") from None


def _secret_option(opts: SinkOptions, sink: str) -> str | None:
    """The signing secret: inline (``secret``), or better, from a 0600 file, an
    environment variable or a systemd credential, so the config holds no secret."""
    inline = opts.optional_str("secret")
    file = opts.path("secret_file") if opts.optional_str("secret_file") is not None else None
    env = opts.optional_str("secret_env")
    credential = opts.optional_str("secret_credential")
    given = [k for k, v in (("secret", inline), ("secret_file", file), ("secret_env", env),
                            ("secret_credential", credential)) if v is not None]  # fmt: skip
    if len(given) > 1:
        raise opts.error(given[1], f"set only one of {', '.join(given)}")
    if inline is not None or not given:
        return inline
    return read_secret(f"sink {sink!r}", "secret", file=file, env=env, credential=credential)


def _decode_secret(secret: str) -> bytes:
    raw = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except ValueError:
        key = b""
    if not key:
        raise ValueError('expected a Standard Webhooks secret: "whsec_" + base64 key bytes')
    return key


def _secret_strings(url: str, headers: Mapping[str, str], secret: str | None) -> list[str]:
    """Every configured string that must not show up in an error message.

    Any header value may be a credential; short ones (``json``, ``prod``) are
    left alone so that scrubbing does not mangle unrelated text.
    """
    found = {s for s in url_secrets(url) if len(s) >= 4}
    for value in headers.values():  # "Bearer TOKEN": the whole value and the token alone
        found.update(part for part in (value, *value.split()) if len(part) >= 8)
    if secret:
        found.update({secret, secret.removeprefix("whsec_")})
    # Longest first, so that a secret containing another is replaced whole.
    return sorted(found, key=len, reverse=True)
