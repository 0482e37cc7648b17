"""The sink half of ``inbound-mail check`` (see :mod:`inbound_mail.check.accounts`).

A sink's options are validated by building it; then a webhook's host is reached
over TCP (and TLS for https), a jsonl file's directory must be writable, a
command's program must exist and be executable, and a redis or nats sink's
``probe()`` logs in and proves its stream can be written (Redis) or exists and
captures the subject (JetStream).  Nothing is delivered unless
``send_test`` is set: then one record that says it is a test.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from ..config.model import SinkConfig
from ..delivery import AttemptContext
from ..errors import ConfigError, InboundMailError
from ..models import SmsRecord
from ..sinks import Sink, SinkOptions, create_sink, redact_url
from ..tls import certificate_refused, client_context, names_in_certificate
from .lines import CheckLevel, CheckLine, reason

__all__ = ["check_sink", "sink_config_error"]


def sink_config_error(config: SinkConfig) -> ConfigError | None:
    """The config error that building this sink raises (an unknown or mistyped key,
    a bad value), or None; other failures are for :func:`check_sink` to report."""
    try:
        sink = create_sink(config)
    except ConfigError as exc:
        return exc
    except InboundMailError:
        return None
    sink.close()
    return None


def check_sink(config: SinkConfig, send_test: bool) -> Iterator[CheckLine]:
    """The lines for one sink: options, reachability, and the test send if asked."""
    subject = f"sink {config.name}"
    try:
        sink = create_sink(config)
    except InboundMailError as exc:
        yield CheckLine("FAIL", subject, "options", str(exc))
        return
    try:
        yield CheckLine("ok", subject, "options", f"a valid {config.type} sink")
        reach = _REACHABILITY.get(config.type)
        if reach is None:
            yield CheckLine("warn", subject, "reachable", f"no check for a {config.type} sink")
        else:
            level, detail = reach(config, sink)
            yield CheckLine(level, subject, "reachable", detail)
        if send_test:
            yield _send_test(sink, subject)
    finally:
        sink.close()


def _webhook_reachable(config: SinkConfig, sink: Sink) -> tuple[CheckLevel, str]:
    url = str(config.options["url"])
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    shown = redact_url(url)
    try:
        with socket.create_connection((host, port), timeout=10) as sock:
            if parts.scheme == "https":
                opts = SinkOptions(config)
                ca_file = opts.path("ca_file") if config.options.get("ca_file") else None
                context = client_context(ca_file or None)
                with context.wrap_socket(sock, server_hostname=host) as tls_sock:
                    return "ok", f"{shown}: TCP and {tls_sock.version()} to {host}:{port}"
    except ssl.SSLCertVerificationError as exc:
        why = certificate_refused(
            exc,
            where=f"{host}:{port}",
            host=host,
            names=lambda: _names_on(host, port, context),
            host_setting=config.key("url"),
            ca_setting=config.key("ca_file"),
            peer="receiver",
        )
        return "FAIL", f"{shown}: {why}"
    except OSError as exc:
        return (
            "FAIL",
            f"{shown}: cannot connect to {host}:{port} ({reason(exc)}): is the receiver up?",
        )
    return "ok", f"{shown}: TCP to {host}:{port}"


def _names_on(host: str, port: int, context: ssl.SSLContext) -> list[str]:
    """The names on the certificate, over a second handshake that still verifies the
    chain but not the host name: only to say what the certificate is for."""
    context.check_hostname = False
    try:
        with (
            socket.create_connection((host, port), timeout=10) as sock,
            context.wrap_socket(sock, server_hostname=host) as tls_sock,
        ):
            return names_in_certificate(tls_sock.getpeercert() or {})
    except OSError:
        return []


def _jsonl_reachable(config: SinkConfig, sink: Sink) -> tuple[CheckLevel, str]:
    path = str(getattr(sink, "path", "-"))
    if path == "-":
        return "ok", "writes to standard output"
    target = Path(path)
    if target.exists():
        if os.access(target, os.W_OK):
            return "ok", f"{target} is writable"
        return "FAIL", f"{target} is not writable: give the service user write access"
    directory = target.parent
    if not directory.is_dir():
        return (
            "FAIL",
            f"directory {directory} does not exist: create it (systemd: /var/lib/inbound-mail)",
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        return "FAIL", f"directory {directory} is not writable: give the service user write access"
    return "ok", f"{target} can be created"


def _command_reachable(config: SinkConfig, sink: Sink) -> tuple[CheckLevel, str]:
    argv: list[str] = list(getattr(sink, "argv", []))
    program = argv[0]
    if "/" in program:
        path = Path(program)
        if not path.is_file():
            return "FAIL", f"program {path} does not exist: fix {config.key('argv')}"
        if not os.access(path, os.X_OK):
            return "FAIL", f"program {path} is not executable: chmod +x {path}"
        return "ok", f"{path} is executable"
    found = shutil.which(program)
    if found is None:
        return (
            "FAIL",
            f"program {program!r} is not on PATH: give {config.key('argv')} an absolute path",
        )
    return "ok", f"{program} is {found}"


def _probe_reachable(config: SinkConfig, sink: Sink) -> tuple[CheckLevel, str]:
    """Event-stream sinks (redis, nats) probe the server themselves: connect,
    authenticate, and prove the stream exists or can be written."""
    probe: Callable[[], str] | None = getattr(sink, "probe", None)
    if probe is None:
        return "warn", f"no check for a {config.type} sink"
    try:
        return "ok", probe()
    except InboundMailError as exc:
        return "FAIL", str(exc)


_REACHABILITY: dict[str, Callable[[SinkConfig, Sink], tuple[CheckLevel, str]]] = {
    "webhook": _webhook_reachable,
    "jsonl": _jsonl_reachable,
    "command": _command_reachable,
    "redis": _probe_reachable,
    "nats": _probe_reachable,
}


def _send_test(sink: Sink, subject: str) -> CheckLine:
    """Deliver one record that says it is a test."""
    now = datetime.now(ZoneInfo("Europe/Rome"))
    record = SmsRecord(
        originator="InboundTest",
        destination="+390000000000",
        date_time=now.strftime("%Y%m%d%H%M%S"),
        received_at=datetime.now(ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%SZ"),
        text="inbound-mail check --send-test: a test message, please ignore",
    )
    try:
        detail = sink.deliver(record, AttemptContext(delivery_id=0, attempt=1))
        sink.flush()
    except Exception as exc:
        return CheckLine("FAIL", subject, "test send", f"{type(exc).__name__}: {exc}")
    return CheckLine(
        "ok", subject, "test send", f"delivered test SMS {record.id[:16]} {detail or ''}".rstrip()
    )
