"""Validation of the parsed TOML tree into :mod:`inbound_mail.config` objects.

Kept apart from ``config.py`` so the dataclasses read as documentation; every
check here raises :class:`ConfigError` with the file and the key path.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from .config import (
    DEFAULT_SENDERS,
    DURATION_EXPECTED,
    AccountConfig,
    Config,
    DatabaseConfig,
    LogConfig,
    MetricsConfig,
    ParseConfig,
    RetryPolicy,
    SinkConfig,
    SinkFilter,
    StatusConfig,
    default_db_path,
    parse_duration,
)
from .errors import ConfigError

T = TypeVar("T")
_MISSING: Any = object()
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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

    def integer(self, name: str, default: Any = _MISSING, minimum: int | None = None) -> Any:
        expect = "an integer" + (f" >= {minimum}" if minimum is not None else "")
        return self.get(name, expect, lambda v: _check_int(v, minimum), default)

    def boolean(self, name: str, default: Any = _MISSING) -> Any:
        return self.get(name, "true or false", _check_bool, default)

    def duration(self, name: str, default: Any = _MISSING) -> Any:
        return self.get(name, DURATION_EXPECTED, parse_duration, default)

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
    path = t.text("path", None)
    result = DatabaseConfig(
        path=_relative_to(t, Path(path)) if path else default_db_path(),
        raw_retention=t.duration("raw_retention", 90 * 86400.0),
    )
    t.finish()
    return result


def _parse_section(t: _Table) -> ParseConfig:
    timezone = t.get(
        "timezone", "an IANA time zone such as Europe/Rome", _check_zone, "Europe/Rome"
    )
    result = ParseConfig(
        senders=tuple(s.lower() for s in t.str_list("senders", list(DEFAULT_SENDERS))),
        timezone=timezone,
        keyword=t.boolean("keyword", False),
    )
    t.finish()
    return result


def _log_section(t: _Table) -> LogConfig:
    level = t.get("level", "DEBUG, INFO, WARNING or ERROR", _check_level, "INFO")
    fmt = t.get("format", '"text" or "json"', lambda v: _check_choice(v, ("text", "json")), "text")
    t.finish()
    return LogConfig(level=level, format=fmt)


def _metrics_section(t: _Table) -> MetricsConfig:
    listen = t.get("listen", 'an address "HOST:PORT"', _check_listen, None)
    t.finish()
    return MetricsConfig(listen=listen)


def _status_section(t: _Table) -> StatusConfig:
    expect = t.table("expect_within")
    expect_within = {number: expect.duration(number) for number in list(expect.data)}
    expect.finish()
    result = StatusConfig(
        heartbeat_stale=t.duration("heartbeat_stale", 120.0),
        slow_delivery=t.duration("slow_delivery", 5.0),
        error_rate=t.get("error_rate", "a fraction between 0 and 1", _check_fraction, 0.01),
        expect_within=expect_within,
    )
    t.finish()
    return result


def _account(t: _Table, index: int, parse: ParseConfig) -> AccountConfig:
    tls = t.get(
        "tls",
        '"implicit", "starttls" or "none"',
        lambda v: _check_choice(v, ("implicit", "starttls", "none")),
        "implicit",
    )
    ca_file = t.text("ca_file", None)
    password_file = t.text("password_file", None)
    account = AccountConfig(
        name=t.get("name", "a name of letters, digits, '.', '_' or '-'", _check_name),
        host=t.text("host"),
        username=t.text("username"),
        port=t.integer("port", 993 if tls == "implicit" else 143, minimum=1),
        tls=tls,
        ca_file=_relative_to(t, Path(ca_file)) if ca_file else None,
        password_file=_relative_to(t, Path(password_file)) if password_file else None,
        password_env=t.text("password_env", None),
        password_credential=t.text("password_credential", None),
        folders=tuple(t.str_list("folders", ["INBOX"])),
        senders=tuple(s.lower() for s in t.str_list("senders", list(parse.senders))),
        after=t.get("after", '"seen", "none", "delete" or "move:FOLDER"', _check_after, "seen"),
        max_size=t.integer("max_size", 1024 * 1024, minimum=1),
        idle=t.boolean("idle", True),
        idle_refresh=t.duration("idle_refresh", 600.0),
        idle_deadline=t.duration("idle_deadline", 60.0),
        poll_interval=t.duration("poll_interval", 60.0),
        resync_interval=t.duration("resync_interval", 900.0),
        connect_timeout=t.duration("connect_timeout", 30.0),
        fetch_batch=t.integer("fetch_batch", 2000, minimum=1),
        file=t.file,
        index=index,
    )
    t.finish()
    if account.idle_refresh > 29 * 60:
        raise t.error(
            "idle_refresh", "at most 29 minutes (RFC 2177: servers may drop an IDLE after 30)"
        )
    secrets = [
        k for k in ("password_file", "password_env", "password_credential") if getattr(account, k)
    ]
    if len(secrets) != 1:
        raise t.error(
            "password_file",
            "set exactly one of password_file, password_env, password_credential"
            + (f" (found {', '.join(secrets)})" if secrets else ""),
        )
    if not account.folders:
        raise t.error("folders", "at least one folder")
    return account


def _sink(t: _Table, index: int) -> SinkConfig:
    name = t.get("name", "a name of letters, digits, '.', '_' or '-'", _check_name)
    kind = t.text("type")
    flt = t.table("filter")
    text_regex = flt.get("text_regex", "a regular expression", _check_regex, None)
    sink_filter = SinkFilter(
        destinations=tuple(flt.str_list("destinations", [])),
        originators=tuple(flt.str_list("originators", [])),
        keywords=tuple(k.upper() for k in flt.str_list("keywords", [])),
        text_regex=text_regex,
    )
    flt.finish()
    retry = RetryPolicy(
        retry_base=t.duration("retry_base", 5.0),
        retry_cap=t.duration("retry_cap", 3600.0),
        max_attempts=t.integer("max_attempts", 100, minimum=1),
        max_age=t.duration("max_age", 7 * 86400.0),
    )
    parallel = t.integer("parallel", 1, minimum=1)
    options = {k: v for k, v in t.data.items() if k not in t.used}
    return SinkConfig(
        name=name,
        type=kind,
        options=options,
        filter=sink_filter,
        retry=retry,
        parallel=parallel,
        file=t.file,
        index=index,
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


def _check_int(value: object, minimum: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError
    if minimum is not None and value < minimum:
        raise ValueError
    return value


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
    if not sep or not port.isdigit() or not host:
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
    try:
        re.compile(_check_str(value))
    except re.error as exc:
        raise ValueError(str(exc)) from exc
    return cast(str, value)
