"""The ``command`` sink: run a program once per record, without a shell.

The program gets the record as one line of JSON on stdin and its fields in
``INBOUND_SMS_ID``, ``INBOUND_SMS_ORIGINATOR``, ``INBOUND_SMS_DESTINATION``,
``INBOUND_SMS_DATE_TIME``, ``INBOUND_SMS_TEXT``, ``INBOUND_SMS_RECEIVED_AT``,
``INBOUND_SMS_KEYWORD`` (empty when there is none), ``INBOUND_SMS_AUTHENTICATED``
(``true``, ``false``, or empty when not checked) and ``INBOUND_SMS_AUTH_REASON``.
Its exit status decides: 0 is delivered, 75 (``EX_TEMPFAIL``) is retried later, anything else (a
signal included) makes the delivery dead.  The last 2 KB of stderr go into
the attempt's error.  After ``timeout`` the program's whole process group gets
SIGTERM, then SIGKILL a second later, and the attempt is retried.

``argv`` is executed as given: ``;``, ``|`` or ``$x`` are literal arguments.
The environment is NOT the daemon's (it may hold credentials such as an IMAP
password variable): only ``PATH``, ``HOME``, ``LANG``, ``LC_*``, ``TZ``,
``TMPDIR``, ``USER`` and ``LOGNAME`` pass through, plus the ``env`` table.
A relative program path with a ``/`` is taken relative to the config file.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import PermanentDeliveryError, TemporaryDeliveryError
from . import SinkOptions, record_json

if TYPE_CHECKING:
    from ..config import SinkConfig
    from ..models import SmsRecord
    from . import DeliveryContext

__all__ = ["EX_TEMPFAIL", "CommandSink"]

EX_TEMPFAIL = 75
STDERR_TAIL = 2048
_TERM_GRACE = 1.0
_PASSTHROUGH = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "USER", "LOGNAME")
_RECORD_ENV = {
    "INBOUND_SMS_ID": "id",
    "INBOUND_SMS_ORIGINATOR": "originator",
    "INBOUND_SMS_DESTINATION": "destination",
    "INBOUND_SMS_DATE_TIME": "date_time",
    "INBOUND_SMS_TEXT": "text",
    "INBOUND_SMS_RECEIVED_AT": "received_at",
    "INBOUND_SMS_KEYWORD": "keyword",
    "INBOUND_SMS_AUTH_REASON": "auth_reason",
}
# The authenticity verdict: "true", "false", or empty when it was not checked.
_AUTHENTICATED_ENV = "INBOUND_SMS_AUTHENTICATED"


class CommandSink:
    """Runs ``argv`` for every record; see the module docstring for the contract."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        timeout: float = 30.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if not argv:
            raise ValueError("argv must not be empty")
        self.name = name
        self.argv = list(argv)
        self.timeout = timeout
        self.env = dict(env or {})

    @classmethod
    def from_config(cls, config: SinkConfig) -> CommandSink:
        """Build from ``[[sinks]]`` options: ``argv`` (required), ``timeout``, ``env``."""
        opts = SinkOptions(config)
        argv = opts.str_list("argv", required=True)
        timeout = opts.duration("timeout", 30.0)
        env = opts.str_table("env")
        opts.finish()
        for key, value in env.items():
            if not key or "=" in key or "\0" in key + value or key.startswith("INBOUND_SMS_"):
                raise opts.error(
                    "env", f"expected names without '=' or NUL, not INBOUND_SMS_*; got {key!r}"
                )
        program = argv[0]
        if "/" in program and not os.path.isabs(program) and config.file:
            argv[0] = str(Path(config.file).parent / program)
        return cls(config.name, argv, timeout=timeout, env=env)

    def __repr__(self) -> str:
        return f"CommandSink({self.name!r}, {self.argv[0]!r})"

    def deliver(self, record: SmsRecord, context: DeliveryContext) -> str | None:
        """Run the program for one record; return ``exit 0`` or raise a DeliveryError."""
        stdin = (record_json(record) + "\n").encode("utf-8")
        try:
            proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=self._environment(record),
                start_new_session=True,  # its own process group, to kill it whole
                close_fds=True,
            )
        except OSError as exc:  # not found, not executable, out of processes
            raise TemporaryDeliveryError(f"cannot run {self.argv[0]!r}: {exc}") from exc
        try:
            _, stderr = proc.communicate(stdin, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            leader_done = proc.poll() is not None
            stderr = _kill_group(proc)
            if not leader_done:
                raise TemporaryDeliveryError(
                    f"timed out after {self.timeout:g}s; process group killed{_tail(stderr)}"
                ) from None
        return _judge(proc.returncode, stderr)

    def flush(self) -> None:
        """Nothing to do: the program's exit status is its acknowledgement."""

    def close(self) -> None:
        """Nothing to release: every run is waited for in ``deliver``."""

    def _environment(self, record: SmsRecord) -> dict[str, str | bytes]:
        env: dict[str, str | bytes] = {
            key: value
            for key, value in os.environ.items()
            if key in _PASSTHROUGH or key.startswith("LC_")
        }
        env.update(self.env)
        data = record.to_dict()
        for variable, field in _RECORD_ENV.items():
            value = data[field] or ""
            # NUL cannot be passed in the environment; lone surrogates cannot be encoded.
            env[variable] = str(value).replace("\0", "").encode("utf-8", "replace")
        verdict = data["authenticated"]
        env[_AUTHENTICATED_ENV] = "" if verdict is None else ("true" if verdict else "false")
        return env


def _judge(code: int, stderr: bytes) -> str:
    if code == 0:
        return "exit 0"
    if code == EX_TEMPFAIL:
        raise TemporaryDeliveryError(f"exit {EX_TEMPFAIL} (EX_TEMPFAIL){_tail(stderr)}")
    if code < 0:
        raise PermanentDeliveryError(f"killed by {_signal_name(-code)}{_tail(stderr)}")
    raise PermanentDeliveryError(f"exit {code}{_tail(stderr)}")


def _kill_group(proc: subprocess.Popen[bytes]) -> bytes:
    """SIGTERM the group, SIGKILL it after a grace period; return what stderr still had."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break  # the whole group is gone already
        try:
            _, stderr = proc.communicate(timeout=_TERM_GRACE)
            return stderr or b""
        except subprocess.TimeoutExpired:
            continue
    # A descendant that left the group may still hold stderr open: stop reading.
    if proc.stderr is not None:
        proc.stderr.close()
    proc.wait()
    return b""


def _tail(stderr: bytes | None) -> str:
    text = (stderr or b"")[-STDERR_TAIL:].decode("utf-8", "replace").strip()
    return f": {text}" if text else ""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
