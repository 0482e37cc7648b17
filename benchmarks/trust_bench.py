"""Trust: what the authenticity check costs the daemon's push latency (issue 10, section 4).

One private Dovecot, one DNS server on 127.0.0.1 (``testsupport.dns``)
publishing a DKIM key, every email DKIM-signed with it.  The daemon
(``inbound-mail run``, a child process, IDLE, ``after = "seen"``) runs in rounds,
alternating ``authenticate = "off"`` and ``"require"`` so that drift in the
machine's load hits both alike; each round APPENDs provider emails one at a
time (after a gap of 50-150 ms) and times APPEND completed -> the SMS's row
committed in SQLite (polled every 5 ms).  With ``require`` the key is fetched
once per daemon (its TTL is 300 s) and cached: the steady state of a feed.

Also, in this process: the verifier's own time per email (``Verifier.check``,
key cached), the precise figure behind the latency difference.

    .venv/bin/python benchmarks/trust_bench.py              # 4 rounds of 40 pushes per mode
    .venv/bin/python benchmarks/trust_bench.py --quick      # 2 rounds of 10
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    PYTHON,
    REPO,
    Table,
    account_table,
    machine,
    percentile,
    save_results,
    toml_table,
)

from inbound_mail.parse.authenticity import KeyResolver, TrustPolicy, Verifier
from inbound_mail.parse.message import parse_email
from inbound_mail.testing.emails import build_provider_email
from inbound_mail.testing.wait import wait_until
from testsupport.dkim import DkimKey
from testsupport.dns import DnsServer
from testsupport.dovecot import DovecotServer

MODES = ("off", "require")
_POLL = 0.005
_TIMEOUT = 10.0
_rng = random.Random(11)


def _email(key: DkimKey, tag: str) -> tuple[str, bytes]:
    raw = key.sign(
        build_provider_email(
            "+393301234567", "+393331234333", "20240501120000", f"trust {tag} {time.time_ns()}"
        )
    )
    return parse_email(raw).id, raw  # type: ignore[union-attr]  # a valid SMS: a record


def _round(
    server: DovecotServer, dns: DnsServer, key: DkimKey, work: Path, mode: str, n: int, tag: str
) -> tuple[list[float], int]:
    """One daemon run under ``mode``: the APPEND -> committed latencies (ms), misses."""
    user = "push"
    db = work / f"{tag}.db"
    config = work / f"{tag}.toml"
    config.write_text(
        toml_table("[database]", {"path": db})
        + toml_table("[log]", {"level": "WARNING"})
        + toml_table("[parse]", {"dns_servers": [dns.address]})
        + account_table(server, user, after="seen", authenticate=mode),
        encoding="utf-8",
    )
    log_path = work / f"{tag}.log"
    with log_path.open("wb") as log:
        daemon = subprocess.Popen(
            [PYTHON, "-m", "inbound_mail", "--config", str(config), "--log-level", "INFO", "run"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    latencies: list[float] = []
    missed = 0
    try:
        wait_until(lambda: b"state=idle" in log_path.read_bytes(), 30, 0.05, message="IDLE")
        import sqlite3

        with server.session(user) as client:
            for index in range(n):
                time.sleep(_rng.uniform(0.05, 0.15))
                sms_id, raw = _email(key, f"{tag}-{index}")
                client.append("INBOX", raw)
                appended = time.monotonic()
                conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
                try:
                    seen = None
                    while time.monotonic() < appended + _TIMEOUT:
                        row = conn.execute(
                            "SELECT authenticated FROM messages WHERE id = ?", (sms_id,)
                        ).fetchone()
                        if row:
                            seen = time.monotonic()
                            expected = None if mode == "off" else 1
                            assert row[0] == expected, (mode, row)
                            break
                        time.sleep(_POLL)
                finally:
                    conn.close()
                if seen is None:
                    missed += 1
                else:
                    latencies.append((seen - appended) * 1000)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    return latencies, missed


def _verifier_cost(dns: DnsServer, key: DkimKey, count: int) -> dict[str, float]:
    """In-process: ms per ``Verifier.check`` with the key cached, and per parse for scale."""
    verifier = Verifier(TrustPolicy("require"), KeyResolver([dns.address]))
    emails = [_email(key, f"cost-{i}")[1] for i in range(count)]
    parsed = [parse_email(raw) for raw in emails]
    verifier.check(emails[0], parsed[0])  # fetch and cache the key
    check_ms, parse_ms = [], []
    for raw, outcome in zip(emails, parsed, strict=True):
        started = time.perf_counter()
        verifier.check(raw, outcome)
        check_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        parse_email(raw)
        parse_ms.append((time.perf_counter() - started) * 1000)
    return {
        "check_p50_ms": percentile(check_ms, 0.5),
        "check_p99_ms": percentile(check_ms, 0.99),
        "parse_p50_ms": percentile(parse_ms, 0.5),
        "dns_queries": float(verifier.resolver.lookups),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 10 pushes per mode")
    parser.add_argument("--rounds", type=int, help="rounds per mode [default: 4]")
    parser.add_argument("--pushes", type=int, help="APPENDs per round [default: 40]")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 4)
    pushes = args.pushes or (10 if args.quick else 40)
    info = machine()
    results: dict[str, Any] = {mode: {"ms": [], "missed": 0} for mode in MODES}
    with (
        tempfile.TemporaryDirectory(prefix="trust-bench-") as tmp,
        DnsServer(ttl=300) as dns,
    ):
        work = Path(tmp)
        key = DkimKey.generate()
        key.publish(dns)
        with DovecotServer(work / "dovecot", users={"push": "pw-push"}) as server:
            for r in range(rounds):
                for mode in MODES if r % 2 == 0 else reversed(MODES):
                    ms, missed = _round(server, dns, key, work, mode, pushes, f"{mode}-{r}")
                    results[mode]["ms"] += ms
                    results[mode]["missed"] += missed
        cost = _verifier_cost(dns, key, 200)
    table = Table(
        f"Push latency, APPEND -> row committed ({rounds} rounds x {pushes} per mode, ms)",
        ["authenticate", "n", "p50", "p90", "p99", "missed"],
    )
    summary: dict[str, Any] = {}
    for mode in MODES:
        values = results[mode]["ms"]
        summary[mode] = {q: percentile(values, f) for q, f in (("p50", 0.5), ("p90", 0.9),
                                                                ("p99", 0.99))}  # fmt: skip
        summary[mode]["n"] = len(values)
        summary[mode]["missed"] = results[mode]["missed"]
        table.add(
            mode,
            len(values),
            f"{summary[mode]['p50']:.1f}",
            f"{summary[mode]['p90']:.1f}",
            f"{summary[mode]['p99']:.1f}",
            results[mode]["missed"],
        )
    delta = summary["require"]["p50"] - summary["off"]["p50"]
    verdict = {"p50_delta_ms": delta, "goal_p50_delta_lt_5ms": delta < 5.0, **cost}
    table.notes.append(
        f"p50 difference require - off: {delta:+.1f} ms (goal < 5 ms: "
        f"{'met' if delta < 5.0 else 'MISSED'})"
    )
    table.notes.append(
        f"in-process Verifier.check, key cached: p50 {cost['check_p50_ms']:.2f} ms, "
        f"p99 {cost['check_p99_ms']:.2f} ms (parse_email p50 {cost['parse_p50_ms']:.2f} ms); "
        f"{cost['dns_queries']:.0f} DNS query for 200 emails"
    )
    text = table.render()
    print(text)
    data = {"machine": info, "summary": summary, "verdict": verdict, "table": text}
    save_results("trust", data)
    if args.json:
        save_results("trust", data, args.json)


if __name__ == "__main__":
    main()
