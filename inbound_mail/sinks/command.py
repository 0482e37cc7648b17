"""The ``command`` sink: run a program once per record, without a shell.

The program gets the record as one line of JSON on stdin and its fields in
``INBOUND_SMS_ID``, ``INBOUND_SMS_ORIGINATOR``, ``INBOUND_SMS_DESTINATION``,
``INBOUND_SMS_DATE_TIME``, ``INBOUND_SMS_TEXT``, ``INBOUND_SMS_RECEIVED_AT``,
``INBOUND_SMS_KEYWORD`` (empty when there is none), ``INBOUND_SMS_AUTHENTICATED``
(``true``, ``false``, or empty when not checked) and ``INBOUND_SMS_AUTH_REASON``.
Each variable holds at most ``ENV_VALUE_LIMIT`` (4 KiB) of UTF-8, cut at a character boundary, and
``INBOUND_SMS_TRUNCATED`` is ``1`` when one was cut (else ``0``): Linux refuses
an environment string over 128 KiB (``E2BIG``), and one long text must not make
every attempt fail.  The whole record is always on stdin.  Its exit status decides:
0 is delivered, 75 (``EX_TEMPFAIL``) is retried later, anything else (a
signal included) makes the delivery dead.  A program that cannot be started
(missing, not executable, ``E2BIG``) makes the delivery dead too: retrying
the same row cannot help, and with ``parallel = 1`` it would hold up every
later row; ``check`` reports such a program.  The last 2 KB of stderr go into
the attempt's error.  After ``timeout`` the program's whole process group gets
SIGTERM, then SIGKILL a second later, and the attempt is retried.

``argv`` is executed as given: ``;``, ``|`` or ``$x`` are literal arguments.
The environment is not the daemon's: only ``PATH``, ``HOME``, ``LANG``,
``LANGUAGE``, ``LC_*``, ``TZ``, ``TMPDIR``, ``USER`` and ``LOGNAME`` pass through, plus the
``env`` table.  This keeps a password variable out of the program's
*environment*, but it is no isolation: the program runs as the daemon's user,
which can read ``/proc/<daemon pid>/environ``.  Under systemd, give the IMAP
password as ``password_credential`` rather than ``password_env``.
A relative program path with a ``/`` is taken relative to the config file.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import PermanentDeliveryError, TemporaryDeliveryError
from . import SinkOptions, record_json

if TYPE_CHECKING:
    from ..config.model import SinkConfig
    from ..models import SmsRecord
    from . import DeliveryContext

__all__ = ["ENV_VALUE_LIMIT", "EX_TEMPFAIL", "CommandSink"]

EX_TEMPFAIL = 75
ENV_VALUE_LIMIT = 4096  # bytes per INBOUND_SMS_* value: far below the kernel's 128 KiB
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
            # Absolute: Path(".") / "./h.sh" is a bare "h.sh" (a config file named
            # "inbound.toml" has the parent "."), which execvp looks up on PATH.
            argv[0] = str(Path(config.file).parent.absolute() / program)
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
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            if exc.errno in _CANNOT_START:  # the same row would fail the same way again
                raise PermanentDeliveryError(f"cannot run {self.argv[0]!r}: {reason}") from exc
            # Out of processes or memory (EAGAIN, ENOMEM): the machine, not the row.
            raise TemporaryDeliveryError(f"cannot run {self.argv[0]!r}: {reason}") from exc
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
        truncated = False
        for variable, field in _RECORD_ENV.items():
            value = data[field] or ""
            # NUL cannot be passed in the environment; lone surrogates cannot be encoded.
            encoded = str(value).replace("\0", "").encode("utf-8", "replace")
            if len(encoded) > ENV_VALUE_LIMIT:
                truncated = True
                encoded = encoded[:ENV_VALUE_LIMIT].decode("utf-8", "ignore").encode("utf-8")
            env[variable] = encoded
        env["INBOUND_SMS_TRUNCATED"] = "1" if truncated else "0"
        verdict = data["authenticated"]
        env[_AUTHENTICATED_ENV] = "" if verdict is None else ("true" if verdict else "false")
        return env


# Errors of execve() that retrying the same row cannot cure.
_CANNOT_START = frozenset(
    {errno.ENOENT, errno.EACCES, errno.E2BIG, errno.ENOEXEC, errno.ENOTDIR, errno.ELOOP,
     errno.EISDIR, errno.EPERM, errno.ENAMETOOLONG}
)  # fmt: skip


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
