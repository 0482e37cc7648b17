"""The ``nats`` sink: each record published to NATS JetStream, delivered on its PubAck.

The message is the same JSON document as the JSON webhook
(:func:`~inbound_mail.sinks.record_json`) on ``subject``, with the header
``Nats-Msg-Id: <sms id>``: inside the stream's duplicate window
(``duplicate_window``, two minutes unless the stream says otherwise) the
server drops a resend, so a crash between the PubAck and the outbox update, or
the same SMS from a second inbound-mail, stores one message.  ``stream`` is
the stream that must store it: the publish carries ``Nats-Expected-Stream``,
so a subject captured by another stream (or by none) is an error, not a
silent success.

Outcomes: a PubAck is delivered (a duplicate one too); an authentication
failure, a permissions violation, a missing stream, a subject the stream does
not capture and a message the stream rejects are permanent, each saying what
to fix; a refused or lost connection, no PubAck within ``timeout`` and
JetStream being unavailable are temporary.  Nothing waits longer than
``timeout`` per attempt.

nats-py is asyncio: the sink owns one event loop in a thread for its whole
life and one connection, opened on first use and opened again on the next
attempt after it is lost (nats-py's own reconnect loop is off: it would retry a
wrong password forever, and a publish during its reconnect would wait
unbounded).  ``deliver`` hands the publish to that loop and waits for it, so
``parallel = N`` puts N publishes in flight on the one connection.
``deliver_many`` hands a whole batch over at once: its publishes go out in
order, without waiting for each other (nats-py's ``publish_async``), and the
PubAcks are awaited together (one hand-off between threads per batch, not per
record).  nats-py is an optional extra: ``pip install 'inbound-mail[nats]'``.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import ssl
import threading
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from ..errors import DeliveryError, PermanentDeliveryError, TemporaryDeliveryError
from ..tls import client_context
from . import REDACTED, SinkOptions, record_json, redact_url, url_secrets
from .clients import ca_file_option, require_client, timeout_option, url_option

if TYPE_CHECKING:
    from ..config.model import SinkConfig
    from ..models import SmsRecord
    from . import DeliveryContext, DeliveryOutcome

__all__ = ["NatsSink", "subject_matches"]

T = TypeVar("T")
_CONNECT_TIMEOUT_CAP = 10.0
_SCHEMES = ("nats", "tls")
_SHORT_WINDOW = 3600.0
_PUBLISHERS = 100  # deliver_many without publish_async: publishes in flight at once
# The JetStream API error code for "expected stream does not match".
_EXPECTED_STREAM_MISMATCH = 10060
_log = logging.getLogger(__name__)


class NatsSink:
    """Publishes each record to JetStream; see the module docstring."""

    def __init__(
        self,
        name: str,
        url: str,
        subject: str,
        stream: str,
        *,
        timeout: float = 30.0,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        ca_file: str | Path | None = None,
    ) -> None:
        import nats  # noqa: F401  (fail here, not in the loop thread)

        _check_url(url)
        self.name = name
        self.url = url
        self.subject = subject
        self.stream = stream
        self.timeout = timeout
        self._user = user
        self._password = password
        self._token = token
        self._tls: ssl.SSLContext | None = None
        if ca_file is not None or urlsplit(url).scheme == "tls":
            self._tls = client_context(ca_file or None)
        self._secrets = sorted(
            {s for s in (*url_secrets(url), password or "", token or "") if len(s) >= 4},
            key=len,
            reverse=True,
        )
        self._nc: Any = None
        self._js: Any = None
        self._last_error: str | None = None
        self._loop = asyncio.new_event_loop()
        self._lock = asyncio.Lock()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"sink-{name}-nats", daemon=True
        )
        self._thread.start()

    @classmethod
    def from_config(cls, config: SinkConfig) -> NatsSink:
        """Build from ``[[sinks]]`` options: url, subject, stream, timeout, user with
        password_file / password_env / password_credential, or token_file /
        token_env / token_credential, ca_file."""
        require_client(config, "nats", "nats-py")
        opts = SinkOptions(config)
        url = url_option(opts, _check_url)
        subject = opts.required_str("subject")
        if any(c in subject for c in " \t\r\n*>") or ".." in subject or subject[0] == ".":
            raise opts.error("subject", "expected a subject without spaces or wildcards (* >)")
        stream = opts.required_str("stream")
        if any(c in stream for c in " \t\r\n*>./\\"):
            raise opts.error("stream", "expected a JetStream stream name (no spaces, . * > / \\)")
        timeout = timeout_option(opts)
        user = opts.optional_str("user")
        password = opts.secret("password")
        token = opts.secret("token")
        ca_file = ca_file_option(opts)
        opts.finish()
        if (user is None) != (password is None):
            missing = "password_file (or password_env / password_credential)"
            raise opts.error("user" if user is None else "password_file",
                             f"user and {missing} go together")  # fmt: skip
        if token is not None and user is not None:
            raise opts.error("token_file", "set either user and password or a token, not both")
        return cls(
            config.name,
            url,
            subject,
            stream,
            timeout=timeout,
            user=user,
            password=password,
            token=token,
            ca_file=ca_file,
        )

    def __repr__(self) -> str:
        return (
            f"NatsSink({self.name!r}, {redact_url(self.url)!r}, subject={self.subject!r}, "
            f"stream={self.stream!r})"
        )

    # -- the Sink protocol --------------------------------------------------------------
    def deliver(self, record: SmsRecord, context: DeliveryContext) -> str | None:
        """Publish with ``Nats-Msg-Id``; return ``PubAck <stream> seq <n>``."""
        return self._run(self._publish(record_json(record).encode("utf-8"), record.id))

    def deliver_many(
        self, items: Sequence[tuple[SmsRecord, DeliveryContext]]
    ) -> list[DeliveryOutcome]:
        """``deliver`` for each record; the publishes in flight together."""
        work = [(record_json(record).encode("utf-8"), record.id) for record, _ in items]
        return self._run(self._publish_many(work))

    def probe(self) -> str:
        """For ``check``: connect, authenticate, and find the stream capturing the subject."""
        return self._run(self._probe())

    def flush(self) -> None:
        """Nothing to do: the PubAck says the stream stored the message."""

    def close(self) -> None:
        """Close the connection and stop the loop thread."""
        if self._loop.is_closed():
            return
        if self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._disconnect(), self._loop)
            try:
                future.result(timeout=_CONNECT_TIMEOUT_CAP)
            except Exception as exc:  # closing: nothing left to do about it
                _log.debug("closing the NATS connection failed: %s", self._scrub(str(exc)))
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_CONNECT_TIMEOUT_CAP)
        if not self._thread.is_alive():
            self._loop.close()

    # -- in the loop thread -----------------------------------------------------------------
    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the sink's loop; wait at most a connect and a timeout for it.

        A task and a SimpleQueue rather than ``run_coroutine_threadsafe``: the
        hand-off between threads is most of this sink's own cost per record, and
        this one is some 15 % cheaper (no chained futures)."""
        if self._loop.is_closed():
            work.close()
            raise TemporaryDeliveryError("the sink is closed")
        finished: queue.SimpleQueue[asyncio.Task[T]] = queue.SimpleQueue()
        started: list[asyncio.Task[T]] = []

        def start() -> None:
            task = self._loop.create_task(work)
            started.append(task)
            task.add_done_callback(finished.put)

        self._loop.call_soon_threadsafe(start)
        limit = self.timeout + min(self.timeout, _CONNECT_TIMEOUT_CAP) + 1.0
        try:
            task = finished.get(timeout=limit)
        except queue.Empty:
            if started:
                self._loop.call_soon_threadsafe(started[0].cancel)
            raise TemporaryDeliveryError(
                f"no answer from NATS within {limit:g}s (timeout {self.timeout:g}s)"
            ) from None
        return task.result()

    async def _jetstream(self) -> Any:
        """The JetStream context of a live connection, connecting first if needed."""
        nc = self._nc
        if nc is not None and nc.is_connected:  # the common case, without the lock
            return self._js
        import nats
        from nats import errors as nx

        async with self._lock:
            if self._nc is not None and self._nc.is_connected:
                return self._js
            await self._disconnect()
            self._last_error = None
            options: dict[str, Any] = {
                "connect_timeout": max(1, round(min(self.timeout, _CONNECT_TIMEOUT_CAP))),
                "allow_reconnect": False,
                # nats-py tries the first connect max_reconnect_attempts + 1 times,
                # reconnect_time_wait apart (0 means forever): twice, quickly.
                "max_reconnect_attempts": 1,
                "reconnect_time_wait": 0.1,
                "error_cb": self._on_error,
                "disconnected_cb": self._quiet,
                "closed_cb": self._quiet,
                "name": f"inbound-mail {self.name}",
            }
            if self._tls is not None:
                options["tls"] = self._tls
                options["tls_hostname"] = urlsplit(self.url).hostname
            if self._user is not None:
                options["user"], options["password"] = self._user, self._password
            if self._token is not None:
                options["token"] = self._token
            shown = redact_url(self.url)
            try:
                nc = await nats.connect(self.url, **options)
            except nx.Error as exc:
                text = self._scrub(str(exc) or type(exc).__name__)
                if isinstance(exc, nx.NoServersError) and self._last_error:
                    text = self._last_error  # why the server could not be reached
                if _is_auth(text):
                    raise PermanentDeliveryError(
                        f"NATS at {shown} refused the login ({text}): check user and "
                        "password_file, or token_file (or their _env / _credential)"
                    ) from None
                raise TemporaryDeliveryError(f"cannot connect to {shown}: {text}") from None
            except (OSError, TimeoutError) as exc:  # refused, unreachable, TLS
                reason = self._scrub(str(exc) or type(exc).__name__)
                raise TemporaryDeliveryError(f"cannot connect to {shown}: {reason}") from None
            self._nc, self._js = nc, nc.jetstream(timeout=self.timeout)
            return self._js

    async def _publish(self, payload: bytes, sms_id: str) -> str:
        from nats import errors as nx
        from nats.js import errors as jx

        js = await self._jetstream()
        try:
            ack = await js.publish(
                self.subject,
                payload,
                timeout=self.timeout,
                stream=self.stream,
                headers={"Nats-Msg-Id": sms_id},
            )
        except jx.NoStreamResponseError:
            raise await self._explain_no_stream() from None
        except jx.APIError as exc:
            raise self._api_error(exc) from None
        except nx.TimeoutError:
            raise self._no_pub_ack() from None
        except (nx.Error, OSError) as exc:  # connection closed or lost, slow consumer...
            await self._disconnect()
            reason = self._scrub(str(exc) or type(exc).__name__)
            raise TemporaryDeliveryError(f"NATS connection lost: {reason}") from None
        return self._acked(ack)

    def _acked(self, ack: Any) -> str:
        self._last_error = None  # a publish went through: no standing violation
        if ack.duplicate:
            return f"PubAck {ack.stream} seq {ack.seq} (duplicate: dropped by the stream)"
        return f"PubAck {ack.stream} seq {ack.seq}"

    def _no_pub_ack(self) -> DeliveryError:
        permission = self._last_error
        if permission is not None and "permissions violation" in permission.lower():
            return PermanentDeliveryError(
                f"NATS denied the publish ({permission}): allow the user to publish "
                f"to {self.subject!r}"
            )
        return TemporaryDeliveryError(
            f"no PubAck from stream {self.stream!r} within {self.timeout:g}s"
        )

    async def _publish_many(self, work: list[tuple[bytes, str]]) -> list[DeliveryOutcome]:
        from nats import errors as nx
        from nats.js import errors as jx

        js = await self._jetstream()
        if not hasattr(js, "publish_async"):  # nats-py before 2.7: a task a publish
            return await self._publish_each(work)
        # publish_async writes each message at once (in order) and returns a future
        # for its PubAck, resolved by one reply subscription: no task, no timer a record.
        futures: list[asyncio.Future[Any]] = []
        try:
            for payload, sms_id in work:
                futures.append(
                    await js.publish_async(
                        self.subject, payload, stream=self.stream, headers={"Nats-Msg-Id": sms_id}
                    )
                )
        except (nx.Error, OSError) as exc:  # connection closed or lost, slow consumer...
            for future in futures:
                future.cancel()
            await self._disconnect()
            reason = self._scrub(str(exc) or type(exc).__name__)
            raise TemporaryDeliveryError(f"NATS connection lost: {reason}") from None
        if not futures:
            return []
        _done, late = await asyncio.wait(futures, timeout=self.timeout)
        for future in late:
            future.cancel()
        outcomes: list[DeliveryOutcome] = []
        no_stream: DeliveryError | None = None  # explained once a batch
        for future in futures:
            if future.cancelled():
                outcomes.append(self._no_pub_ack())
                continue
            error = future.exception()
            if error is None:
                outcomes.append(self._acked(future.result()))
            elif isinstance(error, jx.NoStreamResponseError):
                no_stream = no_stream or await self._explain_no_stream()
                outcomes.append(no_stream)
            elif isinstance(error, jx.APIError):
                outcomes.append(self._api_error(error))
            else:
                reason = self._scrub(str(error) or type(error).__name__)
                outcomes.append(TemporaryDeliveryError(f"publish failed: {reason}"))
        return outcomes

    async def _publish_each(self, work: list[tuple[bytes, str]]) -> list[DeliveryOutcome]:
        outcomes: list[DeliveryOutcome] = [None] * len(work)
        items = iter(enumerate(work))

        # A few publishers take the records in turn, each writing its publish
        # before it first waits, so the messages reach the server in the order given.
        async def publisher() -> None:
            for index, (payload, sms_id) in items:
                try:
                    outcomes[index] = await self._publish(payload, sms_id)
                except Exception as exc:
                    outcomes[index] = exc

        await asyncio.gather(*(publisher() for _ in range(min(len(work), _PUBLISHERS))))
        return outcomes

    async def _probe(self) -> str:
        from nats.js import errors as jx

        js = await self._jetstream()
        try:
            info = await js.stream_info(self.stream)
        except jx.NotFoundError:
            raise self._no_such_stream() from None
        except jx.APIError as exc:
            raise self._api_error(exc) from None
        except Exception as exc:  # no responders: JetStream is off or not ready
            raise TemporaryDeliveryError(
                f"JetStream did not answer ({type(exc).__name__}): is the server run with -js?"
            ) from None
        subjects = list(info.config.subjects or [])
        if not any(subject_matches(pattern, self.subject) for pattern in subjects):
            raise self._not_captured(subjects)
        window = info.config.duplicate_window or 0.0
        hint = ""
        if window < _SHORT_WINDOW:  # a resend or a second daemon's copy later than this is kept
            hint = "; short for scale-out and resends: consider --dupe-window 24h"
        return (
            f"{redact_url(self.url)}: stream {self.stream!r} captures {self.subject!r} "
            f"({info.state.messages} messages; duplicate window {window:g}s{hint})"
        )

    async def _explain_no_stream(self) -> DeliveryError:
        """No stream captures the subject: say whether ours is missing or elsewhere."""
        from nats.js import errors as jx

        try:
            info = await self._js.stream_info(self.stream)
        except jx.NotFoundError:
            return self._no_such_stream()
        except Exception:  # no responders: JetStream itself is off or not ready yet
            return TemporaryDeliveryError(
                f"no JetStream stream answered for {self.subject!r}: is JetStream enabled "
                "(nats-server -js) and ready?"
            )
        return self._not_captured(list(info.config.subjects or []))

    def _no_such_stream(self) -> PermanentDeliveryError:
        return PermanentDeliveryError(
            f"JetStream stream {self.stream!r} does not exist: create it, e.g. "
            f"nats stream add {self.stream} --subjects {self.subject!r} --dupe-window 24h"
        )

    def _not_captured(self, subjects: list[str]) -> PermanentDeliveryError:
        return PermanentDeliveryError(
            f"JetStream stream {self.stream!r} does not capture subject {self.subject!r} "
            f"(its subjects: {', '.join(subjects) or 'none'}): add it to the stream or fix "
            "the sink's subject"
        )

    def _api_error(self, exc: Any) -> DeliveryError:
        description = self._scrub(str(getattr(exc, "description", "") or exc))
        code = getattr(exc, "err_code", None)
        status = getattr(exc, "code", None)
        if code == _EXPECTED_STREAM_MISMATCH:
            return PermanentDeliveryError(
                f"subject {self.subject!r} is stored by another stream than {self.stream!r} "
                f"({description}): fix the sink's stream or subject"
            )
        text = f"JetStream error {status or ''} {code or ''}: {description}".replace("  ", " ")
        if status is not None and int(status) >= 500:
            return TemporaryDeliveryError(text)
        return PermanentDeliveryError(text)

    async def _disconnect(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            try:
                await asyncio.wait_for(nc.close(), _CONNECT_TIMEOUT_CAP)
            except Exception as exc:  # already broken: it is dropped either way
                _log.debug("closing the NATS connection: %s", self._scrub(str(exc)))

    async def _on_error(self, exc: Exception) -> None:
        """nats-py reports asynchronous errors (a permissions violation, ...) here,
        instead of logging a traceback per event."""
        self._last_error = self._scrub(_nats_error_text(exc))

    async def _quiet(self) -> None:
        """Disconnections are reported by the next ``deliver``, not by nats-py."""

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text


def subject_matches(pattern: str, subject: str) -> bool:
    """True if the NATS subject ``pattern`` (``*`` one token, ``>`` the rest) covers ``subject``."""
    want, have = pattern.split("."), subject.split(".")
    for i, part in enumerate(want):
        if part == ">":
            return len(have) > i
        if i >= len(have) or part not in ("*", have[i]):
            return False
    return len(want) == len(have)


def _nats_error_text(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_auth(text: str) -> bool:
    lowered = text.lower()
    if "timeout" in lowered:  # "Authentication Timeout": the login came too late
        return False
    return any(w in lowered for w in ("authorization violation", "authentication", "user auth"))


def _check_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise ValueError("expected a nats:// or tls:// URL") from None
    if parts.scheme not in _SCHEMES or not parts.hostname:
        raise ValueError(
            "expected a nats:// or tls:// (TLS) URL with a host, e.g. nats://127.0.0.1:4222"
        )
