"""Sinks: where stored SMS records go.  The :class:`Sink` Protocol is defined here, once.

A sink type is found by name through the entry-point group ``inbound_mail.sinks``;
the built-ins (``webhook``, ``jsonl``, ``command``) are declared in that group
too, so a third-party sink is one ``pip install`` away::

    [project.entry-points."inbound_mail.sinks"]
    mysink = "my_package.module:MySink"

The entry point names a class (or any callable) with a ``from_config`` classmethod
that takes a :class:`~inbound_mail.config.model.SinkConfig` and returns a :class:`Sink`.
:class:`SinkOptions` reads and checks ``SinkConfig.options`` for it, and
:func:`record_json` and :func:`redact_url` (defined in :mod:`inbound_mail.secrets`,
with :func:`url_secrets`) are the helpers the built-ins share.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..config.model import DURATION_EXPECTED, format_duration, parse_duration
from ..errors import ConfigError
from ..secrets import REDACTED, read_secret, redact_url, url_secrets

if TYPE_CHECKING:
    from ..config.model import SinkConfig
    from ..models import SmsRecord

__all__ = [
    "ENTRY_POINT_GROUP",
    "REDACTED",
    "BatchSink",
    "DeliveryContext",
    "DeliveryOutcome",
    "Sink",
    "SinkFactory",
    "SinkOptions",
    "available_sink_types",
    "create_sink",
    "record_json",
    "redact_url",
    "url_secrets",
]

ENTRY_POINT_GROUP = "inbound_mail.sinks"


class DeliveryContext(Protocol):
    """What a sink may know about the delivery it is making."""

    @property
    def delivery_id(self) -> int: ...

    @property
    def attempt(self) -> int:
        """1 for the first attempt, 2 for the first retry, ..."""
        ...


@runtime_checkable
class Sink(Protocol):
    """Delivers SMS records somewhere.  Called from the sink's delivery worker.

    ``deliver`` must either return (the record is delivered) or raise:
    :class:`~inbound_mail.errors.TemporaryDeliveryError` to be retried with
    backoff (``retry_after`` honoured), or
    :class:`~inbound_mail.errors.PermanentDeliveryError` to make the delivery
    dead at once.  Any other exception counts as temporary.  Delivery is
    at-least-once: a crash between ``deliver`` and the outbox update resends
    the same record, so receivers dedup on ``record.id``.

    With ``parallel = 1`` (the default) every call comes from one thread.  With
    ``parallel = N`` up to N ``deliver`` calls run at once, from different
    threads, so the sink must be thread-safe; ``flush`` and ``close`` are
    always called from the worker's own thread.

    A sink may also have ``deliver_many`` (see :class:`BatchSink`): the worker
    then hands it the due records in batches (up to 100; with ``parallel = N``,
    up to two batches at once, from different threads) instead of one
    ``deliver`` call each, so that one round trip or one thread hand-off serves
    the whole batch.  It returns one outcome per record, in order: the detail
    ``deliver`` would have returned, or the exception it would have raised (an
    instance, not raised; classified as above).  Raising instead fails every
    record of the batch.  Each record stays idempotent on its own, and a sink
    sends them in the order given, so that ``parallel = 1`` keeps the outbox
    order; a record that fails for now in the middle of a batch is retried
    after the ones behind it that were accepted in the same batch, like a
    failure in any ordered pipeline.
    """

    name: str

    def deliver(self, record: SmsRecord, context: DeliveryContext) -> str | None:
        """Deliver one record; return a short detail for the attempt log (e.g. ``HTTP 200``)."""
        ...

    def flush(self) -> None:
        """Make every record ``deliver`` accepted durable (fsync, ...).  Called
        after each batch, before the batch is marked delivered."""
        ...

    def close(self) -> None:
        """Release files, connections and processes."""
        ...


DeliveryOutcome = str | Exception | None
"""One record's outcome from ``deliver_many``: a detail (delivered) or the exception."""


@runtime_checkable
class BatchSink(Sink, Protocol):
    """A :class:`Sink` with the optional ``deliver_many`` (documented on :class:`Sink`)."""

    def deliver_many(
        self, items: Sequence[tuple[SmsRecord, DeliveryContext]]
    ) -> list[DeliveryOutcome]:
        """Deliver the records in order; one outcome per record."""
        ...


class SinkFactory(Protocol):
    """What an ``inbound_mail.sinks`` entry point resolves to."""

    def from_config(self, config: SinkConfig) -> Sink:
        """Build a sink; raise :class:`~inbound_mail.errors.ConfigError` naming
        ``config.key(option)`` for a bad option."""
        ...


def available_sink_types() -> list[str]:
    """The names of every installed sink type, sorted."""
    from importlib.metadata import entry_points  # here: slow to import; only sinks need it

    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def create_sink(config: SinkConfig) -> Sink:
    """Load the entry point named ``config.type`` and build the sink."""
    from importlib.metadata import entry_points  # as above

    matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == config.type]
    if not matches:
        available = ", ".join(available_sink_types()) or "none installed"
        raise config.error("type", f"unknown sink type {config.type!r}; available: {available}")
    try:
        factory = matches[0].load()
    except Exception as exc:  # a broken plugin must not take the daemon down
        raise config.error("type", f"sink type {config.type!r} failed to load: {exc}") from exc
    if not hasattr(factory, "from_config"):
        raise config.error(
            "type", f"sink type {config.type!r} ({matches[0].value}) has no from_config()"
        )
    sink: Sink = factory.from_config(config)
    return sink


class SinkOptions:
    """Typed, checked reads of ``SinkConfig.options`` for a ``from_config``.

    Each getter raises :class:`~inbound_mail.errors.ConfigError` naming the key
    (``sinks[0].timeout``) and what was expected; :meth:`finish` rejects the
    keys no getter asked for, so a typo never passes silently.
    """

    def __init__(self, config: SinkConfig) -> None:
        self.config = config
        self._asked: set[str] = set()

    def _value(self, name: str) -> object | None:
        self._asked.add(name)
        return self.config.options.get(name)

    def error(self, name: str, problem: str) -> ConfigError:
        """A ConfigError for option ``name``."""
        return self.config.error(name, problem)

    def optional_str(self, name: str, default: str | None = None) -> str | None:
        """A string option, or ``default`` when unset."""
        value = self._value(name)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(name, "expected a string")
        return value

    def required_str(self, name: str) -> str:
        """A string option that must be set and not empty."""
        value = self.optional_str(name)
        if not value:
            raise self.error(name, "expected a non-empty string (required)")
        return value

    def choice(self, name: str, choices: Iterable[str], default: str) -> str:
        """A string option from a fixed set."""
        allowed = tuple(choices)
        value = self.optional_str(name, default)
        if value not in allowed:
            raise self.error(name, f"expected one of {', '.join(map(repr, allowed))}")
        return value

    def duration(
        self, name: str, default: float, *, positive: bool = True, high: float = 3600.0
    ) -> float:
        """Seconds, from a number or a string like ``"30s"``, at most ``high`` (every
        number in the config has a range; the default suits timeouts)."""
        value = self._value(name)
        if value is None:
            return default
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            detail = f" ({exc})" if str(exc) else ""
            raise self.error(name, f"expected {DURATION_EXPECTED}, got {value!r}{detail}") from None
        if (positive and seconds <= 0) or seconds > high:
            low = "greater than zero" if positive else "from 0s"
            raise self.error(name, f"expected a duration {low} and at most {format_duration(high)}")
        return seconds

    def integer(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        """A whole number in ``[minimum, maximum]``."""
        value = self._value(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"expected a whole number from {minimum} to {maximum}")
        if not minimum <= value <= maximum:
            raise self.error(name, f"expected a whole number from {minimum} to {maximum}")
        return value

    def str_table(self, name: str) -> dict[str, str]:
        """A table whose values are all strings (e.g. headers, environment)."""
        value = self._value(name)
        if value is None:
            return {}
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise self.error(name, "expected a table of strings")
        return dict(value)

    def str_list(self, name: str, *, required: bool = False) -> list[str]:
        """An array of strings; with ``required``, a non-empty one."""
        value = self._value(name)
        if value is None and not required:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(name, "expected an array of strings")
        if required and not value:
            raise self.error(name, "expected a non-empty array of strings (required)")
        return list(value)

    def path(self, name: str) -> Path:
        """A required path; relative paths are taken relative to the config file."""
        path = Path(self.required_str(name))
        if not path.is_absolute() and self.config.file:
            return Path(self.config.file).parent / path
        return path

    def secret(self, what: str, *, inline: bool = False) -> str | None:
        """A secret from ``<what>_file`` (0600), ``<what>_env`` or ``<what>_credential``
        (a systemd credential), or with ``inline`` from ``<what>`` itself; None when
        none is set.  At most one of them may be set."""
        value = self.optional_str(what) if inline else None
        file_key, env_key, credential_key = f"{what}_file", f"{what}_env", f"{what}_credential"
        file = self.path(file_key) if self.optional_str(file_key) is not None else None
        env = self.optional_str(env_key)
        credential = self.optional_str(credential_key)
        given = [
            key
            for key, v in ((what, value), (file_key, file), (env_key, env),
                           (credential_key, credential))
            if v is not None
        ]  # fmt: skip
        if len(given) > 1:
            raise self.error(given[1], f"set only one of {', '.join(given)}")
        if value is not None or not given:
            return value
        return read_secret(
            f"sink {self.config.name!r}", what, file=file, env=env, credential=credential
        )

    def finish(self) -> None:
        """Reject every option no getter asked for."""
        for name in self.config.options:
            if name not in self._asked:
                known = ", ".join(sorted(self._asked))
                raise self.error(
                    name, f"unknown option for a {self.config.type} sink; expected one of: {known}"
                )


def record_json(record: SmsRecord) -> str:
    """The record as one line of JSON (``to_dict()``, UTF-8 text kept readable).

    Text that cannot be encoded as UTF-8 (a lone surrogate left by a broken
    email) falls back to ASCII escapes, which every JSON reader accepts.
    """
    text = json.dumps(record.to_dict(), ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(record.to_dict(), ensure_ascii=True)
    return text
