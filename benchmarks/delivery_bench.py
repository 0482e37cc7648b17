"""Delivery throughput per sink type, and the time from commit to the POST arriving.

Throughput: a database with ``--sms`` SMS queued for one sink; a child process
runs ``DeliveryWorker.run_once()`` over it (every delivery attempted once, each
recorded in the outbox) and reports its own work time; peak RSS is the child's.
Beside each, the floor of the same sink in the same run: a child doing only the
bare work for the same records, with nothing recorded:

``webhook agile``  httpx.Client (keep-alive) form POSTs, ``+OK`` checked
``webhook json``   httpx.Client JSON POSTs with a Standard Webhooks signature (HMAC-SHA256)
``jsonl``          one ``os.write`` a line, ``fsync`` every 100 lines
``command``        ``subprocess.run(["/bin/true"])`` with the JSON on stdin
``redis``          redis-py ``XADD`` of the same ``id`` + ``json`` fields (its reply is the ack)
``nats``           nats-py JetStream publishes with ``Nats-Msg-Id``, each awaiting its PubAck,
                   on an asyncio loop (with 8: eight publishes in flight)

Each runs sequential and with 8 in parallel (8 threads for the floor).  A third
column, "sink alone", calls the sink object's own ``deliver`` with no outbox, to
split our cost between the sink and the outbox bookkeeping.  The event-stream
sinks talk to a private ``redis-server`` (append-only file, fsync every second)
and ``nats-server -js`` started here on 127.0.0.1, a fresh stream per run.  Webhooks
POST to a bare receiver in this process (``_fast_receiver.py``), which keeps
nothing but an id and a time per request; the capacity table measures it beside
``inbound_mail.testing.webhook_receiver.WebhookReceiver``, so that a receiver
slower than the sink shows up.

Latency: a child runs a ``DeliveryWorker`` in a thread and stores one SMS at a
time (``Store.ingest`` + ``worker.wake()``, 20-40 ms apart); the receiver
timestamps each POST (``time.monotonic``, one clock across processes).  The
baseline is a bare httpx POST: the same timestamp taken just before ``post()``.

    .venv/bin/python benchmarks/delivery_bench.py             # 2,000 SMS, 200 latency samples
    .venv/bin/python benchmarks/delivery_bench.py --quick     # 300 SMS, 40 samples
    .venv/bin/python benchmarks/delivery_bench.py --sinks redis,nats   # those sinks only
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    PYTHON,
    REPO,
    Table,
    machine,
    percentile,
    print_machine,
    rate,
    run_child,
    save_results,
)
from _delivery_children import SECRET, make_db
from _fast_receiver import FastReceiver

from inbound_mail.testing.webhook_receiver import WebhookReceiver
from testsupport.nats_server import NatsServer
from testsupport.redis_server import RedisServer

SINKS = ("webhook agile", "webhook json", "jsonl", "command", "redis", "nats")
STREAM_SERVERS: dict[str, Any] = {}  # "redis": RedisServer, "nats": NatsServer, set by main()
CHILDREN = str(Path(__file__).with_name("_delivery_children.py"))


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def sink_options(kind: str, receiver: FastReceiver, work: Path) -> tuple[str, dict[str, Any]]:
    """(sink type, options) for one sink kind."""
    if kind == "webhook agile":
        return "webhook", {"url": receiver.url, "format": "agile"}
    if kind == "webhook json":
        return "webhook", {"url": receiver.url, "format": "json", "secret": SECRET}
    if kind == "jsonl":
        return "jsonl", {"path": str(work / f"out-{time.time_ns()}.jsonl")}
    if kind == "redis":  # a stream of its own per run: no marker of an earlier run applies
        server = STREAM_SERVERS["redis"]
        options = {"url": server.url, "stream": f"bench-{time.time_ns()}"}
        return "redis", {**options, "password_file": str(server.password_file)}
    if kind == "nats":
        server = STREAM_SERVERS["nats"]
        tag = time.time_ns()
        server.create_stream(f"BENCH_{tag}", [f"bench.{tag}"])
        options = {"url": server.url, "stream": f"BENCH_{tag}", "subject": f"bench.{tag}"}
        return "nats", {**options, "user": server.user, "password_file": str(server.password_file)}
    return "command", {"argv": ["/bin/true"]}


def throughput(
    receiver: FastReceiver,
    work: Path,
    count: int,
    parallels: Sequence[int],
    sinks: Sequence[str] = SINKS,
) -> list[dict[str, Any]]:
    template = work / "template.db"
    make_db(template, count)
    rows: list[dict[str, Any]] = []
    for kind in sinks:
        for parallel in parallels:
            for mode in ("floor", "sink", "inbound-mail"):
                sink_type, options = sink_options(kind, receiver, work)
                db = work / f"run-{time.time_ns()}.db"
                shutil.copy(template, db)
                spec = {"db": str(db), "type": sink_type, "options": options, "parallel": parallel}
                receiver.clear()
                child = _child(
                    {"floor": "bare", "sink": "sink", "inbound-mail": "worker"}[mode], spec, work
                )
                report = child.report()
                if kind.startswith("webhook") and len(receiver.arrivals) != report["delivered"]:
                    raise RuntimeError(
                        f"{kind}: {len(receiver.arrivals)} POSTs, {report['delivered']} delivered"
                    )
                rows.append(
                    {
                        "sink": kind,
                        "parallel": parallel,
                        "mode": mode,
                        "rss_mb": child.max_rss_mb,
                        "per_s": rate(report["delivered"], report["work_seconds"]),
                        **report,
                    }
                )
                log(f"  {kind:<13} x{parallel} {mode:<12} {rows[-1]['per_s']:,.0f}/s")
                for path in work.glob(f"{db.name}*"):
                    path.unlink()
    return rows


def capacity(
    fast: FastReceiver, slow: WebhookReceiver, work: Path, count: int, parallels: Sequence[int]
) -> list[dict[str, Any]]:
    """What each receiver takes from bare http.client: is the receiver the bottleneck?"""
    rows = []
    for label, url, n in (
        ("bare receiver (benchmarks/_fast_receiver.py)", fast.url, count),
        ("WebhookReceiver (inbound_mail.testing)", slow.url, 80),
    ):
        for parallel in parallels:
            child = _child("capacity", {"url": url, "count": n, "parallel": parallel}, work)
            report = child.report()
            rows.append(
                {
                    "receiver": label,
                    "parallel": parallel,
                    "per_s": rate(report["delivered"], report["work_seconds"]),
                }
            )
            log(f"  capacity {label} x{parallel}: {rows[-1]['per_s']:,.0f}/s")
    fast.clear()
    slow.clear()
    return rows


def latency(receiver: FastReceiver, work: Path, count: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    variants = (
        ("bare httpx POST", "latency-bare", 1),
        ("DeliveryWorker, webhook agile", "latency", 1),
        ("DeliveryWorker, webhook agile, parallel 8", "latency", 8),
    )
    for label, mode, parallel in variants:
        receiver.clear()
        spec = {
            "db": str(work / f"latency-{time.time_ns()}.db"),
            "count": count,
            "parallel": parallel,
            "type": "webhook",
            "options": {"url": receiver.url, "format": "agile"},
        }
        sent: dict[str, float] = _child(mode, spec, work).report()["sent"]
        arrived = dict(receiver.arrivals)
        values = [(arrived[key] - at) * 1000 for key, at in sent.items() if key in arrived]
        rows.append(
            {
                "variant": label,
                "p50": percentile(values, 0.5),
                "p99": percentile(values, 0.99),
                "max": max(values, default=float("nan")),
                "n": len(values),
                "missed": len(sent) - len(values),
            }
        )
        log(f"  latency {label}: p50 {rows[-1]['p50']:.1f} ms")
    return rows


def _child(mode: str, spec: dict[str, Any], work: Path) -> Any:
    spec_path = work / f"spec-{time.time_ns()}.json"
    spec_path.write_text(json.dumps(spec))
    return run_child([PYTHON, CHILDREN, mode, str(spec_path)], cwd=REPO).check()


def render(
    rows: list[dict[str, Any]], caps: list[dict[str, Any]], lat: list[dict[str, Any]], count: int
) -> tuple[str, dict[str, Any]]:
    table = Table(
        f"Delivery throughput, {count:,} queued SMS (deliveries/s of the child's work time)",
        [
            "sink",
            "parallel",
            "floor /s",
            "sink alone /s",
            "inbound-mail /s",
            "vs floor",
            "outbox commits",
            "peak RSS MB (floor / ours)",
        ],
    )
    verdict: dict[str, Any] = {"throughput": {}}
    keyed = {(r["sink"], r["parallel"], r["mode"]): r for r in rows}
    for (sink, parallel, mode), r in keyed.items():
        if mode != "floor":
            continue
        ours = keyed[(sink, parallel, "inbound-mail")]
        alone = keyed[(sink, parallel, "sink")]
        table.add(
            sink,
            parallel,
            round(r["per_s"]),
            round(alone["per_s"]),
            round(ours["per_s"]),
            f"{ours['per_s'] / r['per_s']:.0%}",
            ours["commits"],
            f"{r['rss_mb']:.0f} / {ours['rss_mb']:.0f}",
        )
        verdict["throughput"][f"{sink} x{parallel}"] = ours["per_s"]
    table.notes.append(
        "webhooks POST to the bare receiver (benchmarks/_fast_receiver.py) in the parent "
        "process; its capacity is in the table above"
    )
    cap_table = Table(
        "Receiver capacity: bare http.client POSTs, keep-alive (requests/s)",
        ["receiver", "connections", "requests/s"],
    )
    for r in caps:
        cap_table.add(r["receiver"], r["parallel"], round(r["per_s"]))
    lat_table = Table(
        "Time from commit to the POST arriving at the receiver (ms)",
        ["variant", "p50", "p99", "max", "samples", "missed"],
    )
    for r in lat:
        lat_table.add(
            r["variant"],
            f"{r['p50']:.1f}",
            f"{r['p99']:.1f}",
            f"{r['max']:.1f}",
            r["n"],
            r["missed"],
        )
    verdict["latency_ms"] = {r["variant"]: {"p50": r["p50"], "p99": r["p99"]} for r in lat}
    return cap_table.render() + "\n" + table.render() + "\n" + lat_table.render(), verdict


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sms", "--messages", dest="sms", type=int, help="queued SMS [default: 2000]"
    )
    parser.add_argument("--samples", type=int, help="latency samples [default: 200]")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 300 SMS, 40 samples")
    parser.add_argument(
        "--sinks",
        default=",".join(SINKS),
        help=f"comma-separated sink kinds to measure [default: {','.join(SINKS)}]",
    )
    parser.add_argument(
        "--json", type=Path, help="write the figures here [default: results/delivery.json]"
    )
    args = parser.parse_args(argv)
    sinks = [kind.strip() for kind in args.sinks.split(",") if kind.strip()]
    unknown = sorted(set(sinks) - set(SINKS))
    if unknown:
        parser.error(f"unknown sink kinds {unknown}; choose from {', '.join(SINKS)}")
    count = args.sms or (300 if args.quick else 2000)
    samples = args.samples or (40 if args.quick else 200)
    info = machine()
    print_machine(info)
    with (
        tempfile.TemporaryDirectory(prefix="delivery-bench-") as tmp,
        FastReceiver() as fast,
        WebhookReceiver() as slow,
        RedisServer(Path(tmp) / "redis-server", appendfsync="everysec") as redis_server,
        NatsServer(Path(tmp) / "nats-server") as nats_server,
    ):
        STREAM_SERVERS.update(redis=redis_server, nats=nats_server)
        work = Path(tmp)
        caps = capacity(fast, slow, work, count, (1, 8))
        rows = throughput(fast, work, count, (1, 8), sinks)
        lat = latency(fast, work, samples)
    text, verdict = render(rows, caps, lat, count)
    print(text)
    save_results(
        "delivery",
        {"machine": info, "throughput": rows, "latency": lat, "verdict": verdict, "table": text},
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
