"""Validation of the parsed TOML tree into :mod:`inbound_mail.config.model` objects.

The reader holds no default values: a key missing from the file is left out of
the keyword arguments, so the dataclass default in :mod:`.model` applies -- the
same value as with no config file at all.  The only fallbacks written here are
inheritances (an account's ``senders`` and trust keys default to ``[parse]``'s,
its ``port`` to :func:`~inbound_mail.config.model.default_port` of its ``tls``).

Kept apart from :mod:`.model` so the dataclasses read as documentation; every
check here raises :class:`ConfigError` with the file and the key path.
"""

from __future__ import annotations

import os
import re
import tomllib
import zoneinfo
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar, cast

from ..errors import ConfigError
from .model import (
    DNS_TIMEOUT_RANGE,
    WORKERS_RANGE,
    AccountConfig,
    Config,
    DatabaseConfig,
    LogConfig,
    MetricsConfig,
    OAuth2Config,
    ParseConfig,
    RetryPolicy,
    SinkConfig,
    SinkFilter,
    StatusConfig,
    default_port,
    format_duration,
    parse_dns_server,
    parse_duration,
)

T = TypeVar("T")
_MISSING: Any = object()
#: A key absent from the file: left out of the dataclass's arguments (see :func:`present`).
ABSENT: Any = object()


def present(**values: Any) -> dict[str, Any]:
    """The keyword arguments whose key was in the file: the model's defaults fill the rest."""
    return {name: value for name, value in values.items() if value is not ABSENT}


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_DAY = 86400.0
_YEAR = 365 * _DAY


class _Table:
    """One TOML table being read; remembers which keys were used."""

    def __init__(self, data: object, file: str, prefix: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"expected a table, got {_kind(data)}", file=file, key=prefix or None)
        self.data: dict[str, Any] = data
        self.file = file
        self.prefix = prefix
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(problem, file=self.file, key=self.key(name))

    def get(self, name: str, expect: str, check: Callable[[Any], T], default: Any = _MISSING) -> T:
        self.used.add(name)
        if name not in self.data:
            if default is _MISSING:
                raise self.error(name, f"required; expected {expect}")
            return cast(T, default)
        value = self.data[name]
        try:
            return check(value)
        except (TypeError, ValueError) as exc:
            detail = f" ({exc})" if str(exc) else ""
            raise self.error(name, f"expected {expect}, got {_show(value)}{detail}") from exc

    def text(self, name: str, default: Any = _MISSING) -> Any:
        return self.get(name, "a string", _check_str, default)

    def integer(self, name: str, default: Any, low: int, high: int) -> Any:
        """An integer from ``low`` to ``high`` inclusive (every number has a range)."""
        expect = f"an integer from {low} to {high}"
        return self.get(name, expect, lambda v: _check_int(v, low, high), default)

    def boolean(self, name: str, default: Any = _MISSING) -> Any:
        return self.get(name, "true or false", _check_bool, default)

    def duration(self, name: str, default: Any, low: float, high: float, *, why: str = "") -> Any:
        """A duration from ``low`` to ``high`` seconds inclusive; ``why`` explains the range."""
        expect = (
            f"a duration from {format_duration(low)} to {format_duration(high)}"
            f'{f" ({why})" if why else ""}: seconds, or a string like "30s", "10m", "2h", "7d"'
        )
        return self.get(name, expect, lambda v: _check_duration(v, low, high), default)

    def str_list(self, name: str, default: Any = _MISSING) -> Any:
        return self.get(name, "a list of strings", _check_str_list, default)

    def table(self, name: str) -> _Table:
        self.used.add(name)
        return _Table(self.data.get(name, {}), self.file, self.key(name))

    def tables(self, name: str) -> list[_Table]:
        self.used.add(name)
        value = self.data.get(name, [])
        if not isinstance(value, list):
            raise self.error(name, f"expected an array of tables ([[{name}]]), got {_kind(value)}")
        return [_Table(item, self.file, f"{self.key(name)}[{i}]") for i, item in enumerate(value)]

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            known = ", ".join(sorted(self.used)) or "none"
            raise self.error(unknown[0], f"unknown key (known keys here: {known})")


def build_config(data: dict[str, Any], path: Path) -> Config:
    root = _Table(data, str(path), "")
    parse = _parse_section(root.table("parse"))
    config = Config(
        path=path,
        database=_database_section(root.table("database")),
        parse=parse,
        log=_log_section(root.table("log")),
        metrics=_metrics_section(root.table("metrics")),
        status=_status_section(root.table("status")),
        accounts=tuple(_account(t, i, parse) for i, t in enumerate(root.tables("accounts"))),
        sinks=tuple(_sink(t, i) for i, t in enumerate(root.tables("sinks"))),
    )
    root.finish()
    _unique(root, "accounts", [a.name for a in config.accounts])
    _unique(root, "sinks", [s.name for s in config.sinks])
    return config


def _database_section(t: _Table) -> DatabaseConfig:
    path = t.text("path", ABSENT)
    result = DatabaseConfig(
        **present(
            path=_relative_to(t, Path(path)) if path and path is not ABSENT else ABSENT,
            raw_retention=t.duration(
                "raw_retention", ABSENT, 0, 100 * _YEAR, why="0 keeps raw emails forever"
            ),
        )
    )
    t.finish()
    return result


def _parse_section(t: _Table) -> ParseConfig:
    low, high = DNS_TIMEOUT_RANGE
    result = ParseConfig(
        **present(
            senders=_senders(t, ABSENT),
            timezone=t.get(
                "timezone", "an IANA time zone such as Europe/Rome", _check_zone, ABSENT
            ),
            keyword=t.boolean("keyword", ABSENT),
            authenticate=_authenticate(t, ABSENT),
            authserv_ids=_authserv_ids(t, ABSENT),
            dkim_domains=_dkim_domains(t, ABSENT),
            dns_servers=t.get(
                "dns_servers",
                'a list of DNS server addresses such as ["127.0.0.1", "[::1]:5353"]',
                lambda v: tuple(_check_dns_servers(v)),
                ABSENT,
            ),
            dns_timeout=t.get(
                "dns_timeout",
                f"a duration from {low:g} to {high:g} seconds",
                lambda v: _check_range(parse_duration(v), low, high),
                ABSENT,
            ),
            workers=t.integer("workers", ABSENT, *WORKERS_RANGE),
        )
    )
    t.finish()
    return result


def _senders(t: _Table, default: Any) -> Any:
    return t.get(
        "senders", "a list of strings", lambda v: tuple(s.lower() for s in _check_str_list(v)),
        default,
    )  # fmt: skip


def _authenticate(t: _Table, default: Any) -> Any:
    return t.get(
        "authenticate",
        '"require", "report" or "off"',
        lambda v: _check_choice(v, ("require", "report", "off")),
        default,
    )


def _authserv_ids(t: _Table, default: Any) -> Any:
    return t.get(
        "authserv_ids",
        "a list of authserv-ids (the first word of your server's Authentication-Results headers)",
        lambda v: tuple(a.strip().lower() for a in _check_names_list(v)),
        default,
    )


def _dkim_domains(t: _Table, default: Any) -> Any:
    return t.get(
        "dkim_domains",
        "a non-empty list of domain names",
        lambda v: tuple(d.strip().lower() for d in _check_domains(v)),
        default,
    )


def _log_section(t: _Table) -> LogConfig:
    level = t.get("level", "DEBUG, INFO, WARNING or ERROR", _check_level, ABSENT)
    fmt = t.get("format", '"text" or "json"', lambda v: _check_choice(v, ("text", "json")), ABSENT)
    t.finish()
    return LogConfig(**present(level=level, format=fmt))


def _metrics_section(t: _Table) -> MetricsConfig:
    listen = t.get("listen", 'an address "HOST:PORT" (port 0 to 65535)', _check_listen, ABSENT)
    t.finish()
    return MetricsConfig(**present(listen=listen))


def _status_section(t: _Table) -> StatusConfig:
    expect = t.table("expect_within")
    expect_within = {
        number: expect.duration(number, _MISSING, 60, 366 * _DAY) for number in list(expect.data)
    }
    expect.finish()
    result = StatusConfig(
        **present(
            heartbeat_stale=t.duration("heartbeat_stale", ABSENT, 1, _DAY),
            slow_delivery=t.duration("slow_delivery", ABSENT, 0.001, 3600),
            error_rate=t.get("error_rate", "a fraction between 0 and 1", _check_fraction, ABSENT),
            expect_within=expect_within,
        )
    )
    t.finish()
    return result


def _account(t: _Table, index: int, parse: ParseConfig) -> AccountConfig:
    tls = t.get(
        "tls",
        '"implicit", "starttls" or "none"',
        lambda v: _check_choice(v, ("implicit", "starttls", "none")),
        ABSENT,
    )
    ca_file = t.text("ca_file", ABSENT)
    password_file = t.text("password_file", ABSENT)
    auth = t.get(
        "auth", '"password" or "oauth2"', lambda v: _check_choice(v, ("password", "oauth2")),
        ABSENT,
    )  # fmt: skip
    oauth2 = _oauth2_section(t) if auth == "oauth2" else None
    if auth != "oauth2" and "oauth2" in t.data:
        raise t.error("oauth2", 'an [accounts.oauth2] table needs auth = "oauth2"')
    account = AccountConfig(
        name=t.get("name", "a name of letters, digits, '.', '_' or '-'", _check_name),
        host=t.get("host", "a host name or address (not empty, no spaces)", _check_host),
        username=t.get("username", "a non-empty string", _check_nonempty),
        # Inherited from [parse], not defaulted here: the senders and the trust keys.
        senders=_senders(t, parse.senders),
        authenticate=_authenticate(t, parse.authenticate),
        authserv_ids=_authserv_ids(t, parse.authserv_ids),
        dkim_domains=_dkim_domains(t, parse.dkim_domains),
        file=t.file,
        index=index,
        **present(
            tls=tls,
            # The TLS mode's port (default_port) when the file sets tls but no port.
            port=t.integer("port", default_port(tls) if tls is not ABSENT else ABSENT, 1, 65535),
            ca_file=_relative_to(t, Path(ca_file)) if ca_file and ca_file is not ABSENT else ABSENT,
            password_file=(
                _relative_to(t, Path(password_file))
                if password_file and password_file is not ABSENT
                else ABSENT
            ),
            password_env=t.text("password_env", ABSENT),
            password_credential=t.text("password_credential", ABSENT),
            folders=t.get(
                "folders", "a list of strings", lambda v: tuple(_check_str_list(v)), ABSENT
            ),
            after=t.get("after", '"seen", "none", "delete" or "move:FOLDER"', _check_after, ABSENT),
            max_size=t.integer("max_size", ABSENT, 1024, 100 * 1024 * 1024),
            idle=t.boolean("idle", ABSENT),
            idle_refresh=t.duration(
                "idle_refresh",
                ABSENT,
                10,
                29 * 60,
                why="RFC 2177: servers may drop an IDLE after 30m",
            ),
            idle_deadline=t.duration("idle_deadline", ABSENT, 1, 29 * 60),
            poll_interval=t.duration("poll_interval", ABSENT, 1, _DAY),
            resync_interval=t.duration("resync_interval", ABSENT, 1, _DAY),
            connect_timeout=t.duration("connect_timeout", ABSENT, 0.1, 600),
            fetch_batch=t.integer("fetch_batch", ABSENT, 1, 100_000),
            auth=auth,
            oauth2=oauth2 if oauth2 is not None else ABSENT,
        ),
    )
    t.finish()
    secrets = [
        k for k in ("password_file", "password_env", "password_credential") if getattr(account, k)
    ]
    if auth == "oauth2":
        if secrets:
            raise t.error(secrets[0], 'an account with auth = "oauth2" takes no password')
    elif len(secrets) != 1:
        raise t.error(
            "password_file",
            "set exactly one of password_file, password_env, password_credential"
            + (f" (found {', '.join(secrets)})" if secrets else ""),
        )
    if not account.folders:
        raise t.error("folders", "at least one folder")
    return account


# Microsoft identity platform v2.0 and Google's OAuth 2.0 endpoints (see the README).
_MICROSOFT = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/"
_OAUTH_PRESETS: dict[str, dict[str, Any]] = {
    "microsoft": {
        "token_url": _MICROSOFT + "token",
        "authorization_url": _MICROSOFT + "authorize",
        "device_authorization_url": _MICROSOFT + "devicecode",
        "scope": {
            # Delegated: the signed-in user's mailbox; offline_access gives the refresh token.
            "refresh_token": ["https://outlook.office.com/IMAP.AccessAsUser.All", "offline_access"],
            # App-only: the permissions granted to the app (IMAP.AccessAsApp).
            "client_credentials": ["https://outlook.office365.com/.default"],
        },
    },
    "google": {
        "token_url": "https://oauth2.googleapis.com/token",
        "authorization_url": "https://accounts.google.com/o/oauth2/v2/auth",
        # Google's device flow does not allow the mail scope: `auth` uses the loopback flow.
        "device_authorization_url": None,
        "scope": {"refresh_token": ["https://mail.google.com/"]},
    },
}
_URL_EXPECTED = "an https:// URL (http:// only to a loopback address such as 127.0.0.1)"


def _oauth2_section(account: _Table) -> OAuth2Config:
    t = account.table("oauth2")
    provider = t.get(
        "provider",
        '"microsoft", "google" or "custom"',
        lambda v: _check_choice(v, ("microsoft", "google", "custom")),
    )
    flow = t.get(
        "flow",
        '"refresh_token" or "client_credentials"',
        lambda v: _check_choice(v, ("refresh_token", "client_credentials")),
        ABSENT,
    )
    flow_absent = flow is ABSENT
    if flow_absent:
        flow = OAuth2Config.__dataclass_fields__["flow"].default
    preset = _OAUTH_PRESETS.get(provider, {})
    if provider == "google" and flow == "client_credentials":
        raise t.error(
            "flow", 'Google mailboxes take flow = "refresh_token" (a person signs in once)'
        )
    tenant = None
    if provider == "microsoft":
        default_tenant = _MISSING if flow == "client_credentials" else "organizations"
        tenant = t.get(
            "tenant",
            "your directory (tenant) ID or domain"
            + (" (app-only access needs your own tenant)" if default_tenant is _MISSING else ""),
            _check_tenant,
            default_tenant,
        )
        if flow == "client_credentials" and tenant in ("common", "organizations", "consumers"):
            raise t.error("tenant", "app-only access needs your own tenant ID or domain, not "
                          f"{tenant!r}")  # fmt: skip
    elif "tenant" in t.data:
        raise t.error("tenant", 'only provider = "microsoft" takes a tenant')

    def url(name: str) -> str | None:
        default = preset.get(name, _MISSING if name == "token_url" else None)
        if isinstance(default, str) and tenant is not None:
            default = default.format(tenant=tenant)
        return t.get(name, _URL_EXPECTED, _check_oauth_url, default)

    token_url = url("token_url")
    assert token_url is not None  # required, or preset
    default_scope = preset.get("scope", {}).get(flow, _MISSING)
    scope = t.get("scope", "a non-empty list of scopes", _check_scopes, default_scope)
    config = OAuth2Config(
        provider=provider,
        client_id=t.get(
            "client_id", "the application (client) ID, a non-empty string", _check_nonempty
        ),
        token_url=token_url,
        scope=tuple(scope),
        tenant=tenant,
        authorization_url=url("authorization_url"),
        device_authorization_url=url("device_authorization_url"),
        **present(
            flow=ABSENT if flow_absent else flow,
            client_secret_file=_optional_path(t, "client_secret_file"),
            client_secret_env=t.text("client_secret_env", ABSENT),
            client_secret_credential=t.text("client_secret_credential", ABSENT),
            refresh_token_file=_optional_path(t, "refresh_token_file"),
            refresh_token_env=t.text("refresh_token_env", ABSENT),
            refresh_token_credential=t.text("refresh_token_credential", ABSENT),
            sasl=t.get(
                "sasl",
                '"auto", "xoauth2" or "oauthbearer"',
                lambda v: _check_choice(v, ("auto", "xoauth2", "oauthbearer")),
                ABSENT,
            ),
            timeout=t.duration("timeout", ABSENT, 1, 300),
        ),
    )
    t.finish()
    for what in ("client_secret", "refresh_token"):
        found = [f"{what}_{s}" for s in ("file", "env", "credential") if f"{what}_{s}" in t.data]
        if len(found) > 1:
            raise t.error(found[1], f"set at most one of {what}_file, {what}_env, "
                          f"{what}_credential (found {', '.join(found)})")  # fmt: skip
    if flow == "client_credentials":
        if not config.has_client_secret:
            raise t.error("client_secret_file", "app-only access (flow = \"client_credentials\") "
                          "needs the app's secret: set client_secret_file, client_secret_env "
                          "or client_secret_credential")  # fmt: skip
        if config.has_refresh_token_secret:
            raise t.error("refresh_token_file", "app-only access uses no refresh token")
    return config


def _optional_path(t: _Table, name: str) -> Any:
    value = t.text(name, ABSENT)
    return _relative_to(t, Path(value)) if value and value is not ABSENT else ABSENT


def _check_oauth_url(value: object) -> str:
    from urllib.parse import urlsplit

    text = _check_nonempty(value)
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
    except ValueError as exc:
        raise ValueError("not a URL") from exc
    if not host:
        raise ValueError("no host")
    if parts.scheme == "https":
        return text
    if parts.scheme == "http" and _is_loopback(host):
        return text
    raise ValueError("tokens must not cross the network in clear text")


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_tenant(value: object) -> str:
    text = _check_nonempty(value)
    if not re.fullmatch(r"[A-Za-z0-9.-]+", text):
        raise ValueError("letters, digits, '.' and '-' only")
    return text


def _check_scopes(value: object) -> list[str]:
    scopes = _check_str_list(value)
    if not scopes or any(not s or any(c.isspace() for c in s) for s in scopes):
        raise ValueError("each scope one word, at least one")
    return scopes


def _sink(t: _Table, index: int) -> SinkConfig:
    name = t.get("name", "a name of letters, digits, '.', '_' or '-'", _check_name)
    kind = t.text("type")
    flt = t.table("filter")
    strings = "a list of strings"
    sink_filter = SinkFilter(
        **present(
            destinations=flt.get(
                "destinations", strings, lambda v: tuple(_check_str_list(v)), ABSENT
            ),
            originators=flt.get(
                "originators", strings, lambda v: tuple(_check_str_list(v)), ABSENT
            ),
            keywords=flt.get(
                "keywords", strings, lambda v: tuple(k.upper() for k in _check_str_list(v)), ABSENT
            ),
            text_regex=flt.get("text_regex", "a regular expression", _check_regex, ABSENT),
        )
    )
    flt.finish()
    retry = RetryPolicy(
        **present(
            retry_base=t.duration("retry_base", ABSENT, 0.001, 3600),
            retry_cap=t.duration("retry_cap", ABSENT, 0.001, 7 * _DAY),
            max_attempts=t.integer("max_attempts", ABSENT, 1, 100_000),
            max_age=t.duration("max_age", ABSENT, 1, 366 * _DAY),
        )
    )
    if retry.retry_cap < retry.retry_base:
        raise t.error(
            "retry_cap",
            f"expected a duration at least retry_base ({format_duration(retry.retry_base)}), "
            f"got {format_duration(retry.retry_cap)}",
        )
    parallel = t.integer("parallel", ABSENT, 1, 64)
    options = {k: v for k, v in t.data.items() if k not in t.used}
    return SinkConfig(
        name=name,
        type=kind,
        options=options,
        filter=sink_filter,
        retry=retry,
        file=t.file,
        index=index,
        **present(parallel=parallel),
    )


def _unique(root: _Table, section: str, names: list[str]) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise ConfigError(
                f"duplicate name {name!r}", file=root.file, key=f"{section}[{i}].name"
            )
        seen.add(name)


def _relative_to(t: _Table, path: Path) -> Path:
    """Relative paths in a config file are relative to that file, not to the cwd."""
    return path if path.is_absolute() else Path(t.file).parent / path


def _kind(value: object) -> str:
    return {
        dict: "a table",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
    }.get(type(value), type(value).__name__)


def _show(value: object) -> str:
    text = repr(value)
    return f"{_kind(value)} {text if len(text) <= 60 else text[:57] + '...'}"


def _check_str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError
    return value


def _check_int(value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError
    if not low <= value <= high:
        raise ValueError("out of range")
    return value


def _check_duration(value: object, low: float, high: float) -> float:
    seconds = parse_duration(value)
    if not low <= seconds <= high:
        raise ValueError("out of range")
    return seconds


def _check_nonempty(value: object) -> str:
    if not _check_str(value).strip():
        raise ValueError("empty")
    return cast(str, value)


def _check_host(value: object) -> str:
    text = _check_nonempty(value)
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError("spaces or control characters")
    return text


def _check_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError
    return value


def _check_str_list(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError
    return list(value)


def _check_choice(value: object, choices: tuple[str, ...]) -> Any:
    if value not in choices:
        raise ValueError
    return value


def _check_name(value: object) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError
    return value


def _check_zone(value: object) -> str:
    try:
        zoneinfo.ZoneInfo(_check_str(value))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError("unknown time zone") from exc
    return cast(str, value)


def _check_level(value: object) -> str:
    text = _check_str(value).upper()
    if text not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError
    return text


def _check_listen(value: object) -> str:
    host, sep, port = _check_str(value).rpartition(":")
    if not sep or not port.isdigit() or not host or int(port) > 65535:
        raise ValueError
    return cast(str, value)


def _check_fraction(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError
    return float(value)


def _check_after(value: object) -> str:
    text = _check_str(value)
    if text in ("seen", "none", "delete") or (text.startswith("move:") and len(text) > 5):
        return text
    raise ValueError


def _check_regex(value: object) -> str:
    import regex  # here: only a config with a text_regex pays for loading it

    try:
        regex.compile(_check_str(value))  # what SinkFilter.matches runs
    except regex.error as exc:
        raise ValueError(str(exc)) from exc
    return cast(str, value)


def _check_range(value: float, low: float, high: float) -> float:
    if not low <= value <= high:
        raise ValueError(f"out of range {low:g}-{high:g}")
    return value


_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


def _check_domains(value: object) -> list[str]:
    domains = [d.strip().lower().rstrip(".") for d in _check_str_list(value)]
    if not domains:
        raise ValueError("at least one domain")
    for domain in domains:
        if not _DOMAIN.match(domain):
            raise ValueError(f"{domain!r} is not a domain name")
    return domains


def _check_names_list(value: object) -> list[str]:
    names = _check_str_list(value)
    for name in names:
        if not name.strip() or any(c.isspace() or c == ";" for c in name.strip()):
            raise ValueError(f"{name!r} is not an authserv-id (one word, no spaces or ';')")
    return names


def _check_dns_servers(value: object) -> list[str]:
    servers = _check_str_list(value)
    for server in servers:
        try:
            parse_dns_server(server)
        except ValueError as exc:
            raise ValueError(f"{server!r}: {exc}") from exc
    return servers


CONFIG_ENV = "INBOUND_MAIL_CONFIG"
#: Where a config is looked for, in order, when neither --config nor $INBOUND_MAIL_CONFIG is set.
CONFIG_CANDIDATES = (Path("inbound-mail.toml"), Path("/etc/inbound-mail/config.toml"))


def default_config_path() -> Path | None:
    """``$INBOUND_MAIL_CONFIG``, else the first of ``./inbound-mail.toml`` and
    ``/etc/inbound-mail/config.toml`` that exists, else None."""
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    for candidate in CONFIG_CANDIDATES:
        if candidate.is_file():
            return candidate
    return None


def require_accounts(config: Config) -> None:
    """Raise ConfigError unless ``config`` has an account: a daemon without one would
    read nothing while looking healthy.  The error says where the config was looked for."""
    if config.accounts:
        return
    if config.path is None:
        looked = [f"${CONFIG_ENV} (unset)"] + [str(p.absolute()) for p in CONFIG_CANDIDATES]
        raise ConfigError(
            f"no config file found (looked for {', '.join(looked)}): there is no account "
            "to read; pass --config PATH, or write one from config.example.toml with at "
            "least one [[accounts]]"
        )
    raise ConfigError(
        "no [[accounts]] in the file: there is no mailbox to read; add one "
        "(see config.example.toml)",
        file=str(config.path),
        key="accounts",
    )


def load_config(path: str | Path | None, *, db_override: str | Path | None = None) -> Config:
    """Read and validate ``path``; with None, the built-in defaults (no accounts, no sinks)."""
    config = Config() if path is None else _read(Path(path))
    if db_override is not None:
        config = _replace_db(config, Path(db_override))
    return config


def _replace_db(config: Config, db: Path) -> Config:
    return replace(config, database=replace(config.database, path=db))


def _read(path: Path) -> Config:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError("file not found", file=str(path)) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=str(path)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=str(path)) from exc
    return build_config(data, path)
