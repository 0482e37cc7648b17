"""A private, throwaway ``nats-server -js`` for the tests and the benchmarks.

Each :class:`NatsServer` runs Debian's ``nats-server`` binary with a config
file of its own (the package's service is neither started nor used), on a free
port of 127.0.0.1, JetStream on and its store in ``root/jetstream``: a server
stopped or killed and started again (:meth:`NatsServer.restart`, same port,
same store) still holds its streams and their messages::

    with NatsServer(tmp_path) as server:
        server.create_stream("SMS", ["sms.in"], duplicate_window=120)
        ...  # point a nats sink at server.url, user server.user, password_file ...
        assert len(server.messages("SMS")) == 1

Clients log in as :attr:`NatsServer.user` / :attr:`NatsServer.password` (or
with :attr:`NatsServer.token` when one is given); with ``tls=True`` the port
wants TLS (trust :attr:`NatsServer.ca_file`).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from . import HarnessError
from .certs import make_certificates
from .child_server import ChildServer
from .process import free_ports

__all__ = ["NatsServer", "NatsServerError", "StreamMessage"]

T = TypeVar("T")


class NatsServerError(HarnessError):
    """The test NATS server could not be started."""


@dataclass(frozen=True, slots=True)
class StreamMessage:
    """One message stored in a JetStream stream."""

    seq: int
    subject: str
    headers: dict[str, str]
    data: bytes

    def json(self) -> Any:
        return json.loads(self.data)


class NatsServer(ChildServer):
    """One private ``nats-server`` with JetStream; see the module docstring."""

    program = "nats-server"
    fallback = "/usr/sbin/nats-server"
    package = "nats-server"
    error = NatsServerError

    def __init__(
        self,
        root: Path,
        *,
        user: str = "sms",
        password: str = "secret",  # noqa: S107  (a throwaway test server's)
        token: str | None = None,
        tls: bool = False,
        publish_deny: Sequence[str] = (),
    ) -> None:
        """With ``token``, clients log in with that token instead of user and password;
        ``publish_deny``: subjects the user may not publish to."""
        self.root = root
        self.token = token
        self.publish_deny = tuple(publish_deny)
        self.user = user
        self.password = password
        self.tls = tls
        self.host = "127.0.0.1"
        self.port = free_ports(1)[0]
        self.store_dir = root / "jetstream"
        self.config_path = root / "nats.conf"
        self.log_path = root / "nats.log"
        self.ca_file: Path | None = None

    # -- what a client needs -----------------------------------------------------------
    @property
    def url(self) -> str:
        """``nats://127.0.0.1:PORT`` (``tls://`` with TLS); no credentials in it."""
        return f"{'tls' if self.tls else 'nats'}://{self.host}:{self.port}"

    @property
    def password_file(self) -> Path:
        """A 0600 file holding the password, for a sink's ``password_file``."""
        path = self.root / "secrets" / "nats-password"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(f"{self.password}\n", encoding="utf-8")
        return path

    def run(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``await work(nc)`` with a fresh connection of this server's user."""
        import nats

        async def main() -> T:
            tls_options: dict[str, Any] = {}
            if self.tls:
                tls_options["tls"] = ssl.create_default_context(cafile=str(self.ca_file))
            login: dict[str, Any] = {"user": self.user, "password": self.password}
            if self.token is not None:
                login = {"token": self.token}
            nc = await nats.connect(
                self.url,
                **login,
                connect_timeout=2,
                allow_reconnect=False,
                **tls_options,
            )
            try:
                return await work(nc)
            finally:
                await nc.close()

        return asyncio.run(main())

    def create_stream(
        self, name: str, subjects: Sequence[str], *, duplicate_window: float = 120.0
    ) -> None:
        """A file-backed stream capturing ``subjects``; its duplicate window in seconds."""

        async def work(nc: Any) -> None:
            await nc.jetstream().add_stream(
                name=name, subjects=list(subjects), duplicate_window=duplicate_window
            )

        self.run(work)

    def messages(self, stream: str) -> list[StreamMessage]:
        """Every message of ``stream``, oldest first."""

        async def work(nc: Any) -> list[StreamMessage]:
            js = nc.jetstream()
            info = await js.stream_info(stream)
            found: list[StreamMessage] = []
            if info.state.messages == 0:
                return found
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(stream, seq)
                found.append(
                    StreamMessage(seq, msg.subject, dict(msg.headers or {}), msg.data or b"")
                )
            return found

        return self.run(work)

    # -- life cycle (ChildServer) -------------------------------------------------------
    def _argv(self, binary: str) -> list[str]:
        self._write_config()
        return [binary, "-c", str(self.config_path)]

    def _ready(self, log_start: int) -> bool:
        with self.log_path.open("rb") as log:
            log.seek(log_start)
            return b"Server is ready" in log.read()

    def _write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listen: {json.dumps(f'{self.host}:{self.port}')}",
            f"jetstream {{ store_dir: {json.dumps(str(self.store_dir))} }}",
            "authorization {",
            f"  token: {json.dumps(self.token)}"
            if self.token is not None
            else f"  users = [ {{ user: {json.dumps(self.user)}, "
            f"password: {json.dumps(self.password)}, "
            f"permissions: {{ publish: {{ deny: {json.dumps(list(self.publish_deny))} }} }} }} ]",
            "}",
        ]
        if self.tls:
            certs = make_certificates(self.root / "tls")
            self.ca_file = certs.ca_file
            lines += [
                "tls {",
                f"  cert_file: {json.dumps(str(certs.cert_file))}",
                f"  key_file: {json.dumps(str(certs.key_file))}",
                "}",
            ]
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
