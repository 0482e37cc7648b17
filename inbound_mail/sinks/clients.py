"""The options every sink that speaks to a server through an optional client library
(``redis``, ``nats``) reads the same way, documented once here:

- the library itself: missing, ``type`` is a config error naming the extra to
  install (``pip install 'inbound-mail[redis]'``);
- ``url``: required, checked by the sink's own scheme rules;
- ``timeout``: a duration from 100ms to 10m, 30s when unset;
- ``ca_file``: the CA bundle that signed the server's certificate (a path relative
  to the config file), read as PEM at load time, so that a typo fails ``check``
  and the start rather than the first delivery.

Each helper raises :class:`~inbound_mail.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import importlib
import math
import ssl
from collections.abc import Callable
from pathlib import Path

from ..config.model import SinkConfig, format_duration
from ..tls import client_context
from . import SinkOptions

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_TIMEOUT",
    "bounded_duration",
    "ca_file_option",
    "require_client",
    "timeout_option",
    "url_option",
]

DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 600.0
_MIN_TIMEOUT = 0.1


def require_client(config: SinkConfig, module: str, client: str) -> None:
    """Import ``module`` (the sink type's optional extra, named like the type)."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise config.error(
            "type",
            f"the {config.type} sink needs the {client} client: "
            f"pip install 'inbound-mail[{config.type}]'",
        ) from None


def url_option(opts: SinkOptions, check: Callable[[str], None]) -> str:
    """``url``, required; ``check`` raises ValueError saying what a good one looks like."""
    url = opts.required_str("url")
    try:
        check(url)
    except ValueError as exc:
        raise opts.error("url", str(exc)) from None
    return url


def bounded_duration(
    opts: SinkOptions, name: str, default: float, low: float, high: float
) -> float:
    """A duration option within ``[low, high]`` seconds."""
    seconds = opts.duration(name, default, high=math.inf)  # the range is checked here
    if not low <= seconds <= high:
        raise opts.error(
            name, f"expected a duration from {format_duration(low)} to {format_duration(high)}"
        )
    return seconds


def timeout_option(opts: SinkOptions) -> float:
    """``timeout``: how long one call to the server may take."""
    return bounded_duration(opts, "timeout", DEFAULT_TIMEOUT, _MIN_TIMEOUT, MAX_TIMEOUT)


def ca_file_option(opts: SinkOptions) -> Path | None:
    """``ca_file``, read as a PEM CA bundle; None when unset (the system's CAs)."""
    if opts.optional_str("ca_file") is None:
        return None
    ca_file = opts.path("ca_file")
    try:
        client_context(ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise opts.error("ca_file", f"expected a readable PEM CA bundle ({exc})") from None
    return ca_file
