"""A private, throwaway ``redis-server`` for the tests and the benchmarks.

Each :class:`RedisServer` runs Debian's ``redis-server`` binary with its whole
config on the command line (nothing from ``/etc/redis``, the package's own
service is neither started nor used), on a free port of 127.0.0.1, with a data
directory of its own.  The append-only file is fsynced on every write, so a
server stopped or killed and started again (:meth:`RedisServer.restart`, same
port, same data) still holds every entry it acknowledged::

    with RedisServer(tmp_path, password="secret") as server:
        client = server.client()
        ...  # point a redis sink at server.url with password_file = server.password_file
        server.restart()

With ``tls=True`` the port speaks TLS only (a fresh test CA in ``root/tls``;
trust :attr:`RedisServer.ca_file`) and :attr:`RedisServer.url` is ``rediss://``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from . import HarnessError
from .certs import make_certificates
from .child_server import ChildServer
from .process import free_ports

__all__ = ["RedisServer", "RedisServerError"]


class RedisServerError(HarnessError):
    """The test Redis could not be started."""


class RedisServer(ChildServer):
    """One private ``redis-server``; see the module docstring.  A SIGKILL (:meth:`kill`)
    loses nothing acknowledged with ``appendfsync="always"``."""

    program = "redis-server"
    fallback = "/usr/bin/redis-server"
    package = "redis-server"
    error = RedisServerError

    def __init__(
        self,
        root: Path,
        *,
        password: str | None = "secret",  # noqa: S107  (a throwaway test server's)
        tls: bool = False,
        appendfsync: Literal["always", "everysec"] = "always",
    ) -> None:
        """``appendfsync="everysec"`` (the benchmarks) trades the last second of
        acknowledged writes on a SIGKILL for speed; the tests keep ``always``."""
        self.root = root
        self.appendfsync = appendfsync
        self.password = password
        self.tls = tls
        self.host = "127.0.0.1"
        self.port = free_ports(1)[0]
        self.data_dir = root / "data"
        self.log_path = root / "redis.log"
        self.ca_file: Path | None = None

    # -- what a client needs -----------------------------------------------------------
    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` (``rediss://`` with TLS); no credentials in it."""
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}/0"

    @property
    def password_file(self) -> Path:
        """A 0600 file holding the password, for a sink's ``password_file``."""
        path = self.root / "secrets" / "redis-password"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(f"{self.password or ''}\n", encoding="utf-8")
        return path

    def client(self, **options: Any) -> Any:
        """A ``redis.Redis`` client of this server (strings decoded)."""
        import redis

        tls: dict[str, Any] = {}
        if self.tls:
            tls = {"ssl_ca_certs": str(self.ca_file), "ssl_cert_reqs": "required"}
        return redis.Redis.from_url(
            self.url, password=self.password, decode_responses=True, **tls, **options
        )

    def entries(self, stream: str) -> list[tuple[str, dict[str, str]]]:
        """Every entry of ``stream``, oldest first: ``(entry id, fields)``."""
        with self.client() as client:
            return list(client.xrange(stream))

    # -- life cycle (ChildServer) -------------------------------------------------------
    def _argv(self, binary: str) -> list[str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [binary, "--bind", self.host, "--dir", str(self.data_dir)]
        argv += ["--daemonize", "no", "--save", "", "--appendonly", "yes"]
        argv += [
            "--appendfsync",
            self.appendfsync,
            "--protected-mode",
            "no",
            "--loglevel",
            "notice",
        ]
        if self.password is not None:
            argv += ["--requirepass", self.password]
        if self.tls:
            certs = make_certificates(self.root / "tls")
            self.ca_file = certs.ca_file
            argv += ["--port", "0", "--tls-port", str(self.port)]
            argv += ["--tls-cert-file", str(certs.cert_file), "--tls-key-file", str(certs.key_file)]
            argv += ["--tls-ca-cert-file", str(certs.ca_file), "--tls-auth-clients", "no"]
        else:
            argv += ["--port", str(self.port)]
        return argv

    def _ready(self, log_start: int) -> bool:
        try:
            with self.client(socket_timeout=2, socket_connect_timeout=2) as client:
                return bool(client.ping())
        except Exception:  # not listening yet, or still loading the append-only file
            return False
