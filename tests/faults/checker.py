"""The ledger of the fault suite: which SMS were sent, which the receiver got, and how often.

Every email sent carries a unique token in its SMS text.  The receiver (a json
webhook, so each request carries ``webhook-id``, the SMS id) records every
request; a request it answered with a 2xx -- or that it processed and then
dropped or answered too late (``action="close"``, a delay past the sink's
timeout) -- counts as processed.  From those:

- ``lost``: tokens sent and never processed;
- ``duplicated``: tokens processed under more than one ``webhook-id``
  (the receiver could not have told the two apart);
- ``resent``: processed requests beyond the first for one ``webhook-id``
  (harmless: the id lets the receiver drop them);
- ``unexpected``: tokens processed that were never sent (delivered must be a
  subset of sent).

The figures of every test are merged into ``benchmarks/results/faults.json`` when
``INBOUND_MAIL_FAULT_RESULTS=1`` is set (``INBOUND_MAIL_FAULT_RESULTS=1 pytest -m faults``):
a plain test run leaves that tracked file alone.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from inbound_mail.testing.emails import build_provider_email
from inbound_mail.testing.webhook_receiver import ReceivedRequest, WebhookReceiver

__all__ = ["RESULTS", "Figures", "Ledger", "record_figures"]

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "faults.json"
DESTINATION = "+393331234333"
DATE_TIME = "20240501120000"
_TOKEN = re.compile(r"\bfx[0-9a-f]{8}-\d{5}\b")


@dataclass(frozen=True, slots=True)
class Figures:
    """What one run came to; ``unexpected`` is checked but not written to the results."""

    sent: int
    delivered: int
    lost: int
    duplicated: int
    resent: int
    seconds: float
    unexpected: int = 0

    def as_result(self) -> dict[str, float | int]:
        result = asdict(self)
        del result["unexpected"]
        result["seconds"] = round(self.seconds, 2)
        return result

    def __str__(self) -> str:
        return (
            f"sent={self.sent} delivered={self.delivered} lost={self.lost} "
            f"duplicated={self.duplicated} resent={self.resent} "
            f"unexpected={self.unexpected} seconds={self.seconds:.1f}"
        )


@dataclass(slots=True)
class Ledger:
    """The tokens sent in one test, and the emails that carried them."""

    prefix: str = field(default_factory=lambda: "fx" + uuid.uuid4().hex[:8])
    emails: Counter[str] = field(default_factory=Counter)
    _next: int = 0

    def new_token(self) -> str:
        token = f"{self.prefix}-{self._next:05d}"
        self._next += 1
        return token

    def email(self, token: str | None = None, *, message_id: str | None = None) -> bytes:
        """A provider email whose SMS text carries ``token`` (a new one by default)."""
        token = token or self.new_token()
        self.emails[token] += 1
        number = int(token.rsplit("-", 1)[1])
        return build_provider_email(
            f"+39347{number:07d}",
            DESTINATION,
            DATE_TIME,
            f"{token} fault-injection SMS",
            message_id=message_id,
        )

    def emails_for(self, count: int) -> list[tuple[str, bytes]]:
        """``count`` new tokens and their emails."""
        tokens = [self.new_token() for _ in range(count)]
        return [(token, self.email(token)) for token in tokens]

    @property
    def sent(self) -> set[str]:
        return set(self.emails)

    def ids_by_token(self, requests: list[ReceivedRequest]) -> dict[str, list[str]]:
        """Processed requests' ``webhook-id`` per token found in their text, in arrival order."""
        found: dict[str, list[str]] = defaultdict(list)
        for request in requests:
            if not processed(request):
                continue
            token = token_of(request)
            if token is not None:
                found[token].append(request.headers.get("webhook-id", ""))
        return found

    def missing(self, receiver: WebhookReceiver) -> set[str]:
        """Tokens sent that the receiver has not processed yet."""
        return self.sent - set(self.ids_by_token(receiver.requests))

    def unexpected(self, receiver: WebhookReceiver) -> set[str]:
        """Tokens processed that this test never sent: must stay empty."""
        return set(self.ids_by_token(receiver.requests)) - self.sent

    def figures(self, receiver: WebhookReceiver, seconds: float) -> Figures:
        by_token = self.ids_by_token(receiver.requests)
        ours = {token: ids for token, ids in by_token.items() if token in self.emails}
        per_id = Counter(i for ids in ours.values() for i in ids)
        return Figures(
            sent=len(self.emails),
            delivered=len(ours),
            lost=len(self.sent - set(ours)),
            duplicated=sum(1 for ids in ours.values() if len(set(ids)) > 1),
            resent=sum(n - 1 for n in per_id.values()),
            seconds=seconds,
            unexpected=len(set(by_token) - self.sent),
        )


def processed(request: ReceivedRequest) -> bool:
    """True when the receiver did the work (2xx), even if the client never heard the answer.

    A request cut off in its body (the sender killed mid-send) is not: no receiver
    would act on half a request.
    """
    complete = len(request.body) == int(request.headers.get("content-length") or 0)
    return complete and 200 <= request.answer.status < 300


def token_of(request: ReceivedRequest) -> str | None:
    try:
        text = str(request.json().get("text", ""))
    except (ValueError, AttributeError):
        return None
    match = _TOKEN.search(text)
    return match.group(0) if match else None


def record_figures(name: str, figures: Figures, path: Path = RESULTS) -> None:
    """Merge ``{name: figures}`` into ``path``, safe against concurrent test runs; only
    when ``INBOUND_MAIL_FAULT_RESULTS`` is set (the file is a tracked snapshot)."""
    if not os.environ.get("INBOUND_MAIL_FAULT_RESULTS"):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(directory, fcntl.LOCK_EX)  # a lock on the directory: no extra file
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            results = {}
        results[name] = figures.as_result()
        staged = path.with_name(f".{path.name}.{os.getpid()}")
        staged.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        staged.replace(path)
    finally:
        os.close(directory)
