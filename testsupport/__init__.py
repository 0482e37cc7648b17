"""Dev-only harnesses that run real servers on 127.0.0.1 for the tests, the
benchmarks and ``./dev demo``: Dovecot and Cyrus IMAP, a TCP fault proxy,
certificates, DNS, DKIM keys, an OAuth2 server, Redis, NATS, hostile emails.

Not part of the wheel (``[tool.hatch.build.targets.wheel]`` packages only
``inbound_mail``); importable in the editable dev install, whose ``.pth`` puts
the repository root on ``sys.path``.  Errors derive from :class:`HarnessError`,
not from the product's error tree."""

from __future__ import annotations


class HarnessError(Exception):
    """A test server could not be set up or driven; the message says what to install or fix."""
