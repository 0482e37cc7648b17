"""Sinks: where stored SMS records go.  The :class:`Sink` Protocol is defined here, once.

A sink type is found by name through the entry-point group ``inbound_mail.sinks``;
the built-ins (``webhook``, ``jsonl``, ``command``) are declared in that group
too, so a third-party sink is one ``pip install`` away::

    [project.entry-points."inbound_mail.sinks"]
    mysink = "my_package.module:MySink"

The entry point names a class (or any callable) with a ``from_config`` classmethod
that takes a :class:`~inbound_mail.config.SinkConfig` and returns a :class:`Sink`.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import SinkConfig
    from ..models import SmsRecord

__all__ = ["ENTRY_POINT_GROUP", "DeliveryContext", "Sink", "SinkFactory", "available_sink_types", "create_sink"]

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
    """Delivers SMS records somewhere.  Called from one delivery worker thread.

    ``deliver`` must either return (the record is delivered) or raise:
    :class:`~inbound_mail.errors.TemporaryDeliveryError` to be retried with
    backoff (``retry_after`` honoured), or
    :class:`~inbound_mail.errors.PermanentDeliveryError` to make the delivery
    dead at once.  Any other exception counts as temporary.  Delivery is
    at-least-once: a crash between ``deliver`` and the outbox update resends
    the same record, so receivers dedup on ``record.id``.
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


class SinkFactory(Protocol):
    """What an ``inbound_mail.sinks`` entry point resolves to."""

    def from_config(self, config: SinkConfig) -> Sink:
        """Build a sink; raise :class:`~inbound_mail.errors.ConfigError` naming
        ``config.key(option)`` for a bad option."""
        ...


def available_sink_types() -> list[str]:
    """The names of every installed sink type, sorted."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def create_sink(config: SinkConfig) -> Sink:
    """Load the entry point named ``config.type`` and build the sink."""
    matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == config.type]
    if not matches:
        available = ", ".join(available_sink_types()) or "none installed"
        raise ConfigError(
            f"unknown sink type {config.type!r}; available: {available}",
            file=config.file,
            key=config.key("type"),
        )
    try:
        factory = matches[0].load()
    except Exception as exc:  # a broken plugin must not take the daemon down
        raise ConfigError(
            f"sink type {config.type!r} failed to load: {exc}",
            file=config.file,
            key=config.key("type"),
        ) from exc
    if not hasattr(factory, "from_config"):
        raise ConfigError(
            f"sink type {config.type!r} ({matches[0].value}) has no from_config()",
            file=config.file,
            key=config.key("type"),
        )
    sink: Sink = factory.from_config(config)
    return sink
