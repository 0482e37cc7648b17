"""The ``redis`` sink: each record appended to a Redis stream with ``XADD``, once.

An entry holds ``id`` (the SMS id) and, with ``format = "json"`` (the
default), ``json``: the same document as the JSON webhook
(:func:`~inbound_mail.sinks.record_json`); with ``format = "fields"``, each
field of the record (``originator``, ``text``, ...; unset ones left out).

Idempotent on the SMS id: one Lua script (atomic in Redis) looks for a marker
key ``{<stream>}:inbound-mail:id:<sms id>`` (``<stream>:inbound-mail:id:...``
when the stream name has a hash tag of its own); if it is there the add is a
duplicate and nothing is written, otherwise it runs ``XADD`` and sets the
marker, holding the new entry id, with a TTL of ``dedup_window`` (24 h by
default).  A resend after a crash, or the same SMS delivered by a second
inbound-mail (see "Scale-out" in the README), within that window adds no
second entry.  The ``{<stream>}`` hash tag keeps the marker in the stream's
hash slot, as a script on a Redis Cluster requires (behind a cluster-aware
proxy); the sink itself talks to one server.  ``maxlen`` trims the stream
approximately (``MAXLEN ~``) on each add; 0, the default, never trims.

Outcomes: an acknowledged add (or a duplicate) is delivered; authentication
and permission errors, a key that is not a stream and any other command error
are permanent; a lost or refused connection, a timeout and the server saying
it is busy, loading, out of memory or read-only are temporary.

redis-py's client is thread-safe (a connection per concurrent call, from its
pool), so ``parallel = N`` needs nothing more.  ``deliver_many`` sends a batch
as one pipeline of the same script, one call per record, in order: one round
trip for the batch, each record still added at most once.  It is an optional extra:
``pip install 'inbound-mail[redis]'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from ..errors import DeliveryError, PermanentDeliveryError, TemporaryDeliveryError
from . import REDACTED, SinkOptions, record_json, redact_url, url_secrets
from .clients import bounded_duration, ca_file_option, require_client, timeout_option, url_option

if TYPE_CHECKING:
    from ..config.model import SinkConfig
    from ..models import SmsRecord
    from . import DeliveryContext, DeliveryOutcome

__all__ = ["RedisSink"]

Format = Literal["json", "fields"]
_FORMATS = ("json", "fields")
_CONNECT_TIMEOUT_CAP = 10.0
_MIN_WINDOW, _MAX_WINDOW = 1.0, 30 * 86400.0
DEFAULT_DEDUP_WINDOW = 86400.0
# Refusals that pass: the server is alive but cannot take the write right now.
_TEMPORARY_REPLIES = frozenset(
    {"OOM", "READONLY", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "LOADING",
     "NOREPLICAS", "MISCONF"}
)  # fmt: skip

# KEYS[1] marker, KEYS[2] stream; ARGV[1] marker TTL (s), ARGV[2] maxlen (0: no
# trim), ARGV[3..] field, value, ...  Returns {1, entry id} or {0, earlier entry id}.
_ADD_ONCE = """
local earlier = redis.call('GET', KEYS[1])
if earlier then return {0, earlier} end
local entry
if ARGV[2] == '0' then
  entry = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
else
  entry = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
end
redis.call('SET', KEYS[1], entry, 'EX', ARGV[1])
return {1, entry}
"""
# For `check`: the same commands on the same keys, writing nothing that stays.
# XTRIM MINID 0 removes nothing (no entry id is below 0-0) but needs the same
# write permission on the stream as XADD; a probe marker lives 10 s.
_PROBE = """
local kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'stream' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE the key is a ' .. kind .. ', not a stream')
end
redis.call('SET', KEYS[1], '1', 'EX', 10)
if kind == 'stream' then redis.call('XTRIM', KEYS[2], 'MINID', '0') end
return {kind, redis.call('XLEN', KEYS[2])}
"""


class RedisSink:
    """XADDs each record to ``stream`` once; see the module docstring."""

    def __init__(
        self,
        name: str,
        url: str,
        stream: str,
        *,
        format: Format = "json",
        maxlen: int = 0,
        dedup_window: float = DEFAULT_DEDUP_WINDOW,
        timeout: float = 30.0,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | Path | None = None,
        max_connections: int = 10,
    ) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        _check_url(url)
        self.name = name
        self.url = url
        self.stream = stream
        self.format: Format = format
        self.maxlen = maxlen
        self.dedup_window = dedup_window
        self.timeout = timeout
        self._secrets = sorted(
            {s for s in (*url_secrets(url), password or "") if len(s) >= 4}, key=len, reverse=True
        )
        tls: dict[str, Any] = {}
        if urlsplit(url).scheme == "rediss":
            # Verified, hostname included, whatever the redis-py version's defaults.
            tls = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
            if ca_file is not None:
                tls["ssl_ca_certs"] = str(ca_file)
        self._client = redis.Redis.from_url(
            url,
            username=username,
            password=password,
            socket_timeout=timeout,
            socket_connect_timeout=min(timeout, _CONNECT_TIMEOUT_CAP),
            # One immediate reconnect: a pooled connection the server closed (a
            # restart) fails on first use.  More is the delivery engine's backoff.
            retry=Retry(NoBackoff(), 1),
            max_connections=max_connections + 1,
            **tls,
        )
        self._add = self._client.register_script(_ADD_ONCE)
        self._probe = self._client.register_script(_PROBE)
        self._prefix = _marker_prefix(stream)
        self._ttl = max(1, round(dedup_window))

    @classmethod
    def from_config(cls, config: SinkConfig) -> RedisSink:
        """Build from ``[[sinks]]`` options: url, stream, format, maxlen, dedup_window,
        timeout, username, password_file / password_env / password_credential, ca_file."""
        require_client(config, "redis", "redis-py")
        opts = SinkOptions(config)
        url = url_option(opts, _check_url)
        stream = opts.required_str("stream")
        try:
            _marker_prefix(stream)
        except ValueError as exc:
            raise opts.error("stream", str(exc)) from None
        fmt: Format = "fields" if opts.choice("format", _FORMATS, "json") == "fields" else "json"
        maxlen = opts.integer("maxlen", 0, minimum=0, maximum=10**12)
        window = bounded_duration(
            opts, "dedup_window", DEFAULT_DEDUP_WINDOW, _MIN_WINDOW, _MAX_WINDOW
        )
        timeout = timeout_option(opts)
        username = opts.optional_str("username")
        password = opts.secret("password")
        ca_file = ca_file_option(opts)
        opts.finish()
        return cls(
            config.name,
            url,
            stream,
            format=fmt,
            maxlen=maxlen,
            dedup_window=window,
            timeout=timeout,
            username=username,
            password=password,
            ca_file=ca_file,
            max_connections=max(config.parallel, 1),
        )

    def __repr__(self) -> str:
        return f"RedisSink({self.name!r}, {redact_url(self.url)!r}, stream={self.stream!r})"

    def marker_key(self, sms_id: str) -> str:
        """The key whose presence makes a record with ``sms_id`` a duplicate."""
        return f"{self._prefix}id:{sms_id}"

    def fields(self, record: SmsRecord, sms_id: str | None = None) -> list[str]:
        """The entry's fields and values, flattened: ``[name, value, ...]``."""
        if self.format == "json":
            return ["id", sms_id or record.id, "json", record_json(record)]
        flat: list[str] = []
        for key, value in record.to_dict().items():
            if value is not None:
                flat += [key, str(value)]
        return flat

    def deliver(self, record: SmsRecord, context: DeliveryContext) -> str | None:
        """Add the record unless its marker exists; return ``XADD <entry id>``."""
        keys, args = self._add_call(record)
        return _added(self._call(self._add, keys, args))

    def deliver_many(
        self, items: Sequence[tuple[SmsRecord, DeliveryContext]]
    ) -> list[DeliveryOutcome]:
        """``deliver`` for each record, in one pipeline (not a transaction: each
        script is atomic on its own, and a failed one does not undo the others)."""
        import redis

        pipe = self._client.pipeline(transaction=False)
        for record, _context in items:
            keys, args = self._add_call(record)
            self._add(keys=keys, args=args, client=pipe)
        try:
            replies = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:  # the connection: the whole batch failed
            raise self._translate(exc) from exc
        return [
            self._translate(reply) if isinstance(reply, Exception) else _added(reply)
            for reply in replies
        ]

    def _add_call(self, record: SmsRecord) -> tuple[list[str], list[Any]]:
        sms_id = record.id  # a hash: computed once here
        args = [self._ttl, self.maxlen, *self.fields(record, sms_id)]
        return [f"{self._prefix}id:{sms_id}", self.stream], args

    def probe(self) -> str:
        """For ``check``: connect, authenticate and prove the stream can be written.

        Raises a DeliveryError (permanent or temporary) saying what is wrong."""
        kind, length = self._call(self._probe, [f"{self._prefix}check", self.stream], [])
        state = "does not exist yet (XADD creates it)"
        if _text(kind) == "stream":
            state = f"holds {int(length)} entries"
        return f"{redact_url(self.url)}: stream {self.stream!r} {state} and can be written"

    def flush(self) -> None:
        """Nothing to do: the script's reply is the server's acknowledgement."""

    def close(self) -> None:
        """Close the pooled connections."""
        self._client.close()

    def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        import redis

        try:
            return script(keys=keys, args=args)
        except redis.RedisError as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: Exception) -> DeliveryError:
        """The DeliveryError (permanent or temporary) for a redis-py error."""
        from redis import exceptions as rx

        if isinstance(exc, rx.AuthenticationError):
            return PermanentDeliveryError(
                f"authentication failed ({self._scrub(str(exc))}): check username and "
                "password_file / password_env / password_credential"
            )
        if isinstance(exc, rx.NoPermissionError):
            return PermanentDeliveryError(
                f"permission denied ({self._scrub(str(exc))}): the Redis user needs "
                f"EVALSHA, XADD, SET and GET on {self.stream!r} and {self._prefix}*"
            )
        if isinstance(exc, rx.TimeoutError):
            return TemporaryDeliveryError(
                f"timed out waiting for Redis (timeout {self.timeout:g}s)"
            )
        if isinstance(exc, rx.ConnectionError):  # refused, reset, TLS, still loading the dataset
            shown = redact_url(self.url)
            return TemporaryDeliveryError(f"connection to {shown} failed: {self._scrub(str(exc))}")
        if isinstance(exc, rx.ResponseError):
            message = self._scrub(str(exc))
            word = _reply_code(exc, message)
            if not message.startswith(word):  # redis-py strips the codes it knows
                message = f"{word} {message}"
            if word == "WRONGTYPE":
                return PermanentDeliveryError(
                    f"the key {self.stream!r} is not a stream: {message}; "
                    "choose another stream name"
                )
            if word in ("MOVED", "ASK"):
                return PermanentDeliveryError(
                    f"the server is a Redis Cluster node ({message}): the redis sink talks "
                    "to one server; point url at a standalone or primary Redis, or a "
                    "cluster-aware proxy"
                )
            if word in _TEMPORARY_REPLIES:
                return TemporaryDeliveryError(f"Redis refused the write: {message}")
            return PermanentDeliveryError(f"Redis error: {message}")
        return TemporaryDeliveryError(f"{type(exc).__name__}: {self._scrub(str(exc))}")

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text


def _added(reply: Any) -> str:
    added, entry = int(reply[0]), _text(reply[1])
    if added:
        return f"XADD {entry}"
    return f"duplicate of entry {entry}: not added again"


def _marker_prefix(stream: str) -> str:
    """The prefix of the marker keys, in the stream's Redis Cluster slot.

    A key's slot is that of its hash tag (the text between the first ``{`` and
    the next ``}``, if not empty), else of the whole key.  A stream name with a
    tag of its own keeps it; any other is made the markers' tag."""
    start = stream.find("{")
    end = stream.find("}", start + 1) if start >= 0 else -1
    if start >= 0 and end > start + 1:
        return f"{stream}:inbound-mail:"
    if "{" in stream or "}" in stream:  # no key derived from it could share its slot
        raise ValueError(
            "expected a stream name without braces, or with a Redis Cluster hash tag like sms-{eu}"
        )
    return "{" + stream + "}:inbound-mail:"


# redis-py turns these error replies into classes and drops the code from the text.
_CODED_ERRORS = (
    ("MovedError", "MOVED"), ("AskError", "ASK"), ("OutOfMemoryError", "OOM"),
    ("ReadOnlyError", "READONLY"), ("TryAgainError", "TRYAGAIN"),
    ("ClusterDownError", "CLUSTERDOWN"), ("MasterDownError", "MASTERDOWN"),
    ("ClusterCrossSlotError", "CROSSSLOT"), ("ExecAbortError", "EXECABORT"),
)  # fmt: skip


def _reply_code(exc: Exception, message: str) -> str:
    """The error reply's code (``OOM``, ``WRONGTYPE``, ...), however redis-py
    presents it."""
    from redis import exceptions as rx

    code = getattr(exc, "status_code", None)
    if isinstance(code, str) and code:
        return code.upper()
    for name, known in _CODED_ERRORS:
        cls = getattr(rx, name, None)
        if cls is not None and isinstance(exc, cls):
            return known
    return message.split(" ", 1)[0].upper()


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _check_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise ValueError("expected a redis:// or rediss:// URL") from None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(
            "expected a redis:// or rediss:// (TLS) URL with a host, e.g. redis://127.0.0.1:6379/0"
        )
