"""Shared by the benchmark scripts: the machine, child processes, the corpus, tables.

Every measured variant runs in a child process of its own, started here through
``_launch.py``, so its peak RSS (``ru_maxrss`` from ``wait4`` of that child
alone, forked from the small launcher rather than from this big process) and
its wall time belong to it alone.
"""

from __future__ import annotations

import compileall
import json
import os
import platform
import random
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from inbound_mail.testing.emails import Encoding, LabelStyle, build_provider_email
from inbound_mail.testing.toml import toml_value

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO = BENCH_DIR.parent
PYTHON = sys.executable
PROVIDER = "smsin@agiletelecom.com"

# -- the machine ------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    """What the figures were measured on.  Compiles the package first (see
    :func:`compile_package`): every script calls this before it times anything."""
    compile_package()
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "dovecot": _dovecot_version(),
        "sqlite": sqlite3.sqlite_version,
        "mail-parser": version("mail-parser"),
        "kernel": platform.release(),
        "load (1 min) at start": f"{os.getloadavg()[0]:.2f}",
    }


def compile_package() -> None:
    """Write ``inbound_mail``'s bytecode, as installing the wheel does.  Without it a
    checkout run with ``PYTHONDONTWRITEBYTECODE=1`` (set on this machine) compiles the
    package from source in every child, the forkserver included (~0.05 s each), while
    the floors' libraries come compiled from site-packages.  compileall writes the
    files whatever that variable says; the children only read them."""
    compileall.compile_dir(REPO / "inbound_mail", quiet=1)


def _dovecot_version() -> str:
    binary = shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/usr/bin")
    if binary is None:
        return "not installed"
    result = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"


def print_machine(info: Mapping[str, str]) -> None:
    print("machine: " + ", ".join(f"{key} {value}" for key, value in info.items()))


# -- child processes ----------------------------------------------------------------------------


@dataclass(slots=True)
class Child:
    """A finished (or killed) child: its wall time, peak RSS and output."""

    argv: list[str]
    wall: float
    max_rss_mb: float
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False
    tree_rss_mb: float = float("nan")
    """Peak memory of the command's whole process tree (parse workers included):
    the summed PSS (shared pages split between their sharers, so the sum is what
    the tree really holds), sampled every 50 ms; the launcher is not counted."""

    def report(self) -> dict[str, Any]:
        """The last JSON object the child printed on stdout (children report that way)."""
        for line in reversed(self.stdout.splitlines()):
            if line.startswith("{"):
                parsed: dict[str, Any] = json.loads(line)
                return parsed
        return {}

    def check(self) -> Child:
        if self.returncode != 0 and not self.timed_out:
            raise RuntimeError(
                f"{' '.join(self.argv)} exited {self.returncode}:\n{self.stderr[-3000:]}"
            )
        return self


def run_child(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    cwd: Path | None = None,
) -> Child:
    """Run ``argv`` under ``_launch.py``, which reports its peak RSS and wall time.
    On ``timeout`` it gets SIGTERM (then SIGKILL), and the result says ``timed_out``."""
    out_path = (
        Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-child-{os.getpid()}-{time.time_ns()}"
    )
    launcher = [PYTHON, "-S", str(BENCH_DIR / "_launch.py"), f"{out_path}.json"]
    with open(f"{out_path}.out", "w+b") as out, open(f"{out_path}.err", "w+b") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [*launcher, *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
        sampler = _TreeSampler(proc.pid)
        sampler.start()
        status, _usage, timed_out = _wait(proc, timeout)
        wall = time.perf_counter() - started
        sampler.stop.set()
        sampler.join()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    try:
        measured = json.loads(Path(f"{out_path}.json").read_text())
    except (OSError, ValueError):  # the launcher itself was killed
        measured = {"max_rss_kb": float("nan"), "wall": wall}
    for suffix in (".out", ".err", ".json"):
        Path(f"{out_path}{suffix}").unlink(missing_ok=True)
    code = os.waitstatus_to_exitcode(status)
    rss = measured["max_rss_kb"] / 1024
    tree = sampler.peak_kb / 1024 if sampler.peak_kb else float("nan")
    return Child(list(argv), measured["wall"], rss, code, stdout, stderr, timed_out, tree)


class _TreeSampler(threading.Thread):
    """Samples the summed PSS of the descendants of ``root`` from /proc."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.peak_kb = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            parents: dict[int, int] = {}
            resident: dict[int, int] = {}
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                parents[int(entry)] = int(stat.rpartition(")")[2].split()[1])
            tree, grew = {self.root}, True
            while grew:
                found = {pid for pid, parent in parents.items() if parent in tree} - tree
                grew = bool(found)
                tree |= found
            for pid in tree - {self.root}:
                resident[pid] = _pss_kb(pid)
            self.peak_kb = max(self.peak_kb, sum(resident.values()))


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _wait(
    proc: subprocess.Popen[bytes], timeout: float | None
) -> tuple[int, resource.struct_rusage, bool]:
    deadline = None if timeout is None else time.monotonic() + timeout
    timed_out = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
            return status, usage, timed_out
        if deadline is not None and time.monotonic() > deadline and not timed_out:
            timed_out = True
            proc.terminate()
            deadline = time.monotonic() + 5
        elif timed_out and deadline is not None and time.monotonic() > deadline:
            proc.kill()
        time.sleep(0.02)


def child_report(data: Mapping[str, Any]) -> None:
    """What a child prints last, for :meth:`Child.report`."""
    print(json.dumps(dict(data)), flush=True)


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (all its threads)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_peak_rss_mb(pid: int) -> float:
    """VmHWM of a live process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- the corpus ---------------------------------------------------------------------------------

_WORDS = [
    "ciao",
    "grazie",
    "domani",
    "appuntamento",
    "conferma",
    "codice",
    "ordine",
    "consegna",
    "pagamento",
    "ricevuto",
    "città",
    "perché",
    "già",
    "più",
    "caffè",
    "è",
    "però",
    "lunedì",
    "venerdì",
    "prezzo",
    "€10",
    "sconto",
    "offerta",
    "STOP",
    "News",
    "ON",
    "OFF",
    "info",
    "orario",
    "negozio",
    "chiuso",
    "aperto",
    "arrivo",
    "ritardo",
    "numero",
    "cliente",
]
_ENCODINGS: tuple[Encoding, ...] = ("quoted-printable", "base64", "8bit")
_STYLES: tuple[LabelStyle, ...] = ("colon", "tight", "equals", "tab", "upper", "text")


def provider_emails(count: int, *, seed: int = 2024, noise: float = 0.05) -> Iterator[bytes]:
    """``count`` emails: provider emails in every encoding and layout, each SMS text
    unique, and a share ``noise`` of mail from other senders."""
    rng = random.Random(seed)
    for index in range(count):
        if rng.random() < noise:
            yield _noise_email(rng, index)
        else:
            yield _provider_email(rng, index)


def _provider_email(rng: random.Random, index: int) -> bytes:
    words = rng.choices(_WORDS, k=rng.randint(3, 40))
    if rng.random() < 0.1:
        words.insert(rng.randint(0, len(words)), "\n")
    text = f"#{index} " + " ".join(words).replace(" \n ", "\n")
    charset = rng.choice(("utf-8", "utf-8", "windows-1252"))
    kind = rng.random()
    day = 1 + index % 28
    return build_provider_email(
        f"+39{3300000000 + rng.randrange(10_000_000)}",
        rng.choice(("+393331234333", "+393331234334", "+393400000001")),
        f"2024{1 + index % 12:02d}{day:02d}{rng.randrange(24):02d}{rng.randrange(60):02d}"
        f"{rng.randrange(60):02d}",
        text,
        encoding=rng.choice(_ENCODINGS),
        html=0.85 <= kind < 0.92,
        alternative=kind >= 0.92,
        charset=charset,
        label_style=rng.choice(_STYLES),
        crlf=rng.random() < 0.5,
        message_id=f"<bench-{index}-{rng.randrange(1 << 30)}@smsin.agiletelecom.com>",
    )


def _noise_email(rng: random.Random, index: int) -> bytes:
    body = " ".join(rng.choices(_WORDS, k=rng.randint(20, 200)))
    return (
        f"From: Newsletter <news{index % 7}@example.com>\r\n"
        f"To: sms@example.it\r\nSubject: Weekly news {index}\r\n"
        f"Message-ID: <noise-{index}@example.com>\r\n"
        "Date: Mon, 25 May 2015 15:46:01 +0200\r\nMIME-Version: 1.0\r\n"
        'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n'
        f"{body}\r\n"
    ).encode()


def write_mbox(path: Path, raws: Iterable[bytes]) -> int:
    """An mboxrd file of ``raws``; returns how many were written."""
    count = 0
    with path.open("wb", buffering=1 << 20) as out:
        for raw in raws:
            out.write(b"From MAILER-DAEMON Mon May 25 15:46:01 2015\n")
            for line in raw.splitlines(keepends=True):
                stripped = line.lstrip(b">")
                out.write(b">" + line if stripped.startswith(b"From ") else line)
            if not raw.endswith(b"\n"):
                out.write(b"\n")
            out.write(b"\n")
            count += 1
    return count


# -- figures and tables ---------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` 0.5 = median); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")


def fmt(value: Any, digits: int = 0) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)


@dataclass(slots=True)
class Table:
    """A plain-text table, printed in Markdown so that README.md can take it as is."""

    title: str
    columns: Sequence[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: Any) -> None:
        self.rows.append([c if isinstance(c, str) else fmt(c) for c in cells])

    def render(self) -> str:
        widths = [len(c) for c in self.columns]
        for row in self.rows:
            widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=False)]
        lines = [f"### {self.title}", ""]
        lines.append(
            "| " + " | ".join(c.ljust(w) for c, w in zip(self.columns, widths, strict=True)) + " |"
        )
        lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for row in self.rows:
            cells = [
                cell.rjust(w) if _numeric(cell) else cell.ljust(w)
                for cell, w in zip(row, widths, strict=True)
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"


_NUMBER = re.compile(r"[-+]?[\d,.]+%?")


def _numeric(cell: str) -> bool:
    return _NUMBER.fullmatch(cell) is not None


def save_results(name: str, data: Mapping[str, Any], path: Path | None = None) -> Path:
    """Write a script's figures as JSON (``results/NAME.json`` unless ``path``)."""
    target = path or RESULTS_DIR / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(dict(data), indent=2, default=str) + "\n", encoding="utf-8")
    return target


def account_table(server: Any, user: str, **extra: Any) -> str:
    """The ``[[accounts]]`` table for ``user`` of a test Dovecot (TLS, its CA, password file)."""
    account = server.account(user)
    values = {
        "name": user,
        "host": account.host,
        "port": account.port,
        "username": user,
        "tls": account.tls,
        "ca_file": account.ca_file,
        "password_file": account.password_file,
        "folders": ["INBOX"],
        # The corpus is unsigned provider mail: these benchmarks measure the pipeline
        # without the authenticity check; trust_bench.py measures its cost.
        "authenticate": "off",
        **extra,
    }
    return toml_table("[[accounts]]", values)


def toml_table(header: str, values: Mapping[str, Any]) -> str:
    lines = [header] + [f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n\n"
