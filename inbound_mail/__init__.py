"""inbound-mail: Agile Telecom's SMS-by-email feed as a reliable stream of SMS records."""

from __future__ import annotations

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
