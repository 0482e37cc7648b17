"""The configuration model: frozen dataclasses, each field with its default.

:mod:`.reader` turns a TOML file into these objects; every problem -- an unknown
key, a wrong type, a missing value -- raises
:class:`~inbound_mail.errors.ConfigError` naming the file, the key path
(``accounts[0].port``) and what was expected.  ``config.example.toml``
documents every key read here, with its default.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import ConfigError

__all__ = [
    "DEFAULT_DKIM_DOMAINS",
    "DEFAULT_SENDERS",
    "DNS_TIMEOUT_RANGE",
    "DURATION_EXPECTED",
    "AccountConfig",
    "AuthMode",
    "Config",
    "DatabaseConfig",
    "LogConfig",
    "MetricsConfig",
    "OAuth2Config",
    "ParseConfig",
    "ParseOptions",
    "RetryPolicy",
    "SinkConfig",
    "SinkFilter",
    "StatusConfig",
    "default_db_path",
    "default_port",
    "format_duration",
    "parse_dns_server",
    "parse_duration",
]

DEFAULT_SENDERS = ("smsin@agiletelecom.com",)
TlsMode = Literal["implicit", "starttls", "none"]
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


DURATION_EXPECTED = 'a duration (seconds, or "30s", "10m", "2h", "7d")'
"""What a duration looks like, for the errors that name the key."""


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as ``"30s"``, ``"10m"``, ``"2h"``, ``"7d"``.

    The ValueError says only what is wrong beyond the form (``negative``), or
    nothing: callers say :data:`DURATION_EXPECTED` once, with the value."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("negative")
        return float(value)
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError


def format_duration(seconds: float) -> str:
    """The shortest exact spelling :func:`parse_duration` reads back: ``500ms``, ``30s``,
    ``29m``, ``7d``; seconds with decimals when no unit divides evenly."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and float(seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    if seconds > 0 and float(seconds * 1000).is_integer():
        return f"{int(seconds * 1000)}ms"
    return f"{seconds:g}s"


def parse_dns_server(value: str) -> tuple[str, int]:
    """``"HOST"``, ``"HOST:PORT"`` or ``"[IPv6]:PORT"`` -> (address, port); ValueError if not."""
    text = value.strip()
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError("expected [ADDRESS]:PORT")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, digits = text.partition(":")
        if not digits.isdigit():
            raise ValueError("expected ADDRESS:PORT")
        port = int(digits)
    if not host or not 0 < port < 65536:
        raise ValueError("expected an IP address, optionally with :PORT (1-65535)")
    try:
        ipaddress.ip_address(host)
    except ValueError as exc:
        raise ValueError("a DNS server is an IP address, not a name") from exc
    return host, port


def default_db_path() -> Path:
    """``$STATE_DIRECTORY/inbound-mail.db`` under systemd, else ``./inbound-mail.db``."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        # systemd may pass several colon-separated directories; the first is ours.
        return Path(state.split(":")[0]) / "inbound-mail.db"
    return Path("inbound-mail.db")


AuthMode = Literal["require", "report", "off"]
DEFAULT_DKIM_DOMAINS = ("agiletelecom.com",)
#: ``[parse] dns_timeout`` range, seconds: long enough for a slow resolver, short
#: enough that one lookup never stalls an account's pass for long.
DNS_TIMEOUT_RANGE = (0.1, 60.0)
#: ``[parse] workers`` range: parse processes of ``backfill`` and ``import``
#: (0: one per core, at most 4; 1: parse in the writer process itself).
WORKERS_RANGE = (0, 64)


@dataclass(frozen=True, slots=True)
class ParseOptions:
    """What the parser accepts: the sender addresses, the provider's zone, keyword
    splitting.  ``[parse]`` (:class:`ParseConfig`) is these plus the trust keys."""

    senders: tuple[str, ...] = DEFAULT_SENDERS
    timezone: str = "Europe/Rome"
    keyword: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "senders", tuple(s.strip().lower() for s in self.senders))
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"unknown time zone {self.timezone!r}", key="parse.timezone") from exc

    @classmethod
    def from_config(
        cls, parse: ParseOptions, senders: tuple[str, ...] | None = None
    ) -> ParseOptions:
        """The parser's options of ``[parse]``; ``senders`` (an account's list) overrides its."""
        return ParseOptions(
            senders=parse.senders if senders is None else senders,
            timezone=parse.timezone,
            keyword=parse.keyword,
        )


@dataclass(frozen=True, slots=True)
class ParseConfig(ParseOptions):
    """``[parse]``: the parser's options and the trust defaults of every account."""

    # Trust (see inbound_mail.parse.authenticity); an account may override the first three.
    authenticate: AuthMode = "require"
    authserv_ids: tuple[str, ...] = ()
    dkim_domains: tuple[str, ...] = DEFAULT_DKIM_DOMAINS
    dns_servers: tuple[str, ...] = ()  # "ADDRESS[:PORT]"; empty: the system's resolver
    dns_timeout: float = 5.0
    workers: int = 0  # backfill/import parse processes; 0: auto (inbound_mail.sources.pool)


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    path: Path = field(default_factory=default_db_path)
    raw_retention: float = 90 * 86400.0  # seconds; 0 keeps raw emails forever

    @property
    def raw_retention_days(self) -> float | None:
        """``raw_retention`` in days, as the store takes it; None keeps raw emails forever."""
        return self.raw_retention / 86400.0 or None


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "INFO"
    format: Literal["text", "json"] = "text"


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str | None = None


@dataclass(frozen=True, slots=True)
class StatusConfig:
    heartbeat_stale: float = 120.0
    slow_delivery: float = 5.0
    error_rate: float = 0.01
    expect_within: Mapping[str, float] = field(default_factory=dict)


AccountAuth = Literal["password", "oauth2"]
OAuthProvider = Literal["microsoft", "google", "custom"]
OAuthFlow = Literal["refresh_token", "client_credentials"]
SaslChoice = Literal["auto", "xoauth2", "oauthbearer"]


@dataclass(frozen=True, slots=True)
class OAuth2Config:
    """An account's ``[accounts.oauth2]`` table, presets already applied
    (see :mod:`inbound_mail.oauth`)."""

    provider: OAuthProvider
    client_id: str
    token_url: str
    scope: tuple[str, ...]
    flow: OAuthFlow = "refresh_token"
    tenant: str | None = None
    authorization_url: str | None = None
    device_authorization_url: str | None = None
    client_secret_file: Path | None = None
    client_secret_env: str | None = None
    client_secret_credential: str | None = None
    refresh_token_file: Path | None = None
    refresh_token_env: str | None = None
    refresh_token_credential: str | None = None
    sasl: SaslChoice = "auto"
    timeout: float = 30.0

    @property
    def has_client_secret(self) -> bool:
        return bool(
            self.client_secret_file or self.client_secret_env or self.client_secret_credential
        )

    @property
    def has_refresh_token_secret(self) -> bool:
        return bool(
            self.refresh_token_file or self.refresh_token_env or self.refresh_token_credential
        )


def default_port(tls: TlsMode) -> int:
    """An account's port when the file gives none: 993 for implicit TLS, else 143."""
    return 993 if tls == "implicit" else 143


@dataclass(frozen=True, slots=True)
class AccountConfig:
    name: str
    host: str
    username: str
    port: int = 993
    tls: TlsMode = "implicit"
    ca_file: Path | None = None
    password_file: Path | None = None
    password_env: str | None = None
    password_credential: str | None = None
    folders: tuple[str, ...] = ("INBOX",)
    senders: tuple[str, ...] = DEFAULT_SENDERS
    after: str = "seen"
    max_size: int = 1024 * 1024
    idle: bool = True
    idle_refresh: float = 600.0
    idle_deadline: float = 60.0
    poll_interval: float = 60.0
    resync_interval: float = 900.0
    connect_timeout: float = 30.0
    fetch_batch: int = 2000
    authenticate: AuthMode = "require"
    authserv_ids: tuple[str, ...] = ()
    dkim_domains: tuple[str, ...] = DEFAULT_DKIM_DOMAINS
    auth: AccountAuth = "password"
    oauth2: OAuth2Config | None = None
    file: str | None = None
    index: int = 0

    def key(self, option: str) -> str:
        return f"accounts[{self.index}].{option}"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retry_base: float = 5.0
    retry_cap: float = 3600.0
    max_attempts: int = 100
    max_age: float = 7 * 86400.0


FILTER_TIMEOUT = 0.25
"""Seconds one ``text_regex`` may take on one SMS text (up to 1M characters)."""


@dataclass(frozen=True, slots=True)
class SinkFilter:
    destinations: tuple[str, ...] = ()
    originators: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()
    text_regex: str | None = None

    def matches(self, record: Any) -> bool:
        """True when the record passes every condition that is set.

        ``text_regex`` runs with the ``regex`` package (``re`` syntax) for at most
        :data:`FILTER_TIMEOUT` seconds; past that it raises ``TimeoutError``.
        """
        if self.destinations and record.destination not in self.destinations:
            return False
        if self.originators and record.originator not in self.originators:
            return False
        if self.keywords and (record.keyword or "").upper() not in self.keywords:
            return False
        if not self.text_regex:
            return True
        # The text is the sender's: a pattern that backtracks catastrophically on
        # it must not take hours.  TimeoutError propagates: the router decides.
        import regex  # here: the parse workers import this module and never filter

        return regex.search(self.text_regex, record.text, timeout=FILTER_TIMEOUT) is not None


@dataclass(frozen=True, slots=True)
class SinkConfig:
    """One ``[[sinks]]`` table.  ``options`` holds the type's own keys, unchecked
    here: the sink's ``from_config`` validates them and names ``key(option)``."""

    name: str
    type: str
    options: Mapping[str, Any] = field(default_factory=dict)
    filter: SinkFilter = field(default_factory=SinkFilter)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    parallel: int = 1
    file: str | None = None
    index: int = 0

    def key(self, option: str) -> str:
        return f"sinks[{self.index}].{option}"

    def error(self, option: str, problem: str) -> ConfigError:
        return ConfigError(problem, file=self.file, key=self.key(option))


@dataclass(frozen=True, slots=True)
class Config:
    path: Path | None = None
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    parse: ParseConfig = field(default_factory=ParseConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
    accounts: tuple[AccountConfig, ...] = ()
    sinks: tuple[SinkConfig, ...] = ()

    def account(self, name: str) -> AccountConfig:
        for account in self.accounts:
            if account.name == name:
                return account
        known = ", ".join(a.name for a in self.accounts) or "none configured"
        raise ConfigError(f"no account named {name!r} (accounts: {known})", file=self._file)

    def sink(self, name: str) -> SinkConfig:
        for sink in self.sinks:
            if sink.name == name:
                return sink
        known = ", ".join(s.name for s in self.sinks) or "none configured"
        raise ConfigError(f"no sink named {name!r} (sinks: {known})", file=self._file)

    @property
    def _file(self) -> str | None:
        return str(self.path) if self.path else None
