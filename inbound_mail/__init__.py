"""inbound-mail: Agile Telecom's SMS-by-email feed as a reliable stream of SMS records.

The public names load on first use (PEP 562): importing any submodule runs this
file, and a parse worker or ``inbound-mail --help`` must not pay for the config
reader, the sinks and their entry points.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config.model import Config
    from .config.reader import load_config
    from .errors import InboundMailError
    from .models import Rejected, Skipped, SmsRecord, dedup_id
    from .sinks import Sink

__all__ = [
    "Config",
    "InboundMailError",
    "Rejected",
    "Sink",
    "Skipped",
    "SmsRecord",
    "__version__",
    "dedup_id",
    "load_config",
]

__version__ = "0.1.0"

# Each public name and the module that defines it.
_LAZY = {
    "Config": ".config.model",
    "InboundMailError": ".errors",
    "Rejected": ".models",
    "Sink": ".sinks",
    "Skipped": ".models",
    "SmsRecord": ".models",
    "dedup_id": ".models",
    "load_config": ".config.reader",
}


if not TYPE_CHECKING:  # mypy sees the imports above, so a misspelt name stays an error

    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value  # once: later look-ups never come back here
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
