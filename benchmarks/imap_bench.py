"""IMAP: backfill against a bare floor and getmail6; push latency and idle CPU against bare IDLE.

One private Dovecot (``testsupport.dovecot``), one user per folder size,
loaded with ``deliver_files`` (the same corpus as the import benchmark: 5 % of
the mail from other senders).  Each folder is read once before timing, so
Dovecot's index and cache and the page cache are warm for every variant alike.

Backfill variants (each a child process; wall time, peak RSS of that child):

``floor``     bare imapclient on the same implicit-TLS port: ``UID SEARCH FROM <sender>``,
              ``UID FETCH BODY.PEEK[]`` in chunks of 200, mail-parser, ``executemany``
              (one transaction per chunk)
``backfill``  ``python -m inbound_mail --config C backfill --account A --no-deliver``, the
              account's ``fetch_batch`` and ``--workers`` left at their shipped defaults
              (a parse process per core, at most 4)
``backfill-w1`` the same with ``--workers 1``: no pool, the writer parses (the old path)
``getmail6``  SimpleIMAPSSLRetriever, read_all, delete = false, into a Maildir; only on the
              smallest folder, time-boxed (``--getmail-timebox``): msg/s from what it did

Rates are messages in the folder per second (every variant is done with the
whole folder: backfill and the floor leave other senders' mail unfetched by
design, getmail6 fetches it all).

Diagnostics, only when asked for: ``--extra-fetch-batch N`` adds backfill with
``fetch_batch = N``, ``--extra-floor-fetch-batch N`` the floor with chunks of N; the
goal is always measured against ``floor``.

Push latency and idle CPU: see ``_push.py``.

    .venv/bin/python benchmarks/imap_bench.py                 # 10k and 100k, 200 pushes
    .venv/bin/python benchmarks/imap_bench.py --quick         # 1k and 5k, 20 pushes
    .venv/bin/python benchmarks/imap_bench.py --messages 100000 --no-push \
        --extra-fetch-batch 200 --extra-floor-fetch-batch 2000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    PROVIDER,
    PYTHON,
    REPO,
    Table,
    account_table,
    machine,
    percentile,
    print_machine,
    provider_emails,
    rate,
    run_child,
    save_results,
    toml_table,
)
from _getmail import run_getmail
from _push import PushResult, measure_push

from testsupport.dovecot import DovecotServer

GOAL_FLOOR = 1.6  # issue 15: both cores
GOAL_GETMAIL = 10.0
GOAL_RSS_MB = 150.0
GOAL_P50_MS = 10.0  # issue 15: the pool adds no hop to the push path
GOAL_P99_MS = 150.0
_SUMMARY = re.compile(
    r"INBOX: (\d+) read, (\d+) new, (\d+) duplicates, (\d+) skipped, (\d+) rejected"
)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- set-up -------------------------------------------------------------------------------------


def load_server(server: DovecotServer, sizes: Sequence[int]) -> dict[int, str]:
    users: dict[int, str] = {}
    for size in sizes:
        user = f"bench{size}"
        server.add_user(user, f"pw-{size}")
        started = time.perf_counter()
        server.deliver_files(user, "INBOX", islice(provider_emails(size), size))
        log(f"loaded {size:,} messages for {user} in {time.perf_counter() - started:.1f} s")
        _warm(server, user)
        users[size] = user
    server.add_user("push", "pw-push")
    _settle()
    return users


def _settle() -> None:
    """Write the freshly loaded folders to disk before anything is timed, so that the
    kernel's writeback of them (~400 MB of dirty pages with 110k messages) does not land
    on the first variant measured: the floor, first in each round."""
    started = time.perf_counter()
    dirty = _meminfo_kb("Dirty")
    os.sync()
    log(f"synced {dirty / 1024:.0f} MB of dirty pages in {time.perf_counter() - started:.1f} s")


def _meminfo_kb(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def _warm(server: DovecotServer, user: str) -> None:
    """Read the folder once, as the variants will, so that none pays for a cold cache."""
    started = time.perf_counter()
    with server.session(user) as client:
        client.select_folder("INBOX", readonly=True)
        uids = sorted(client.search(["FROM", PROVIDER]))
        client.search("ALL")
        for start in range(0, len(uids), 500):
            client.fetch(uids[start : start + 500], ["RFC822.SIZE", "BODY.PEEK[]"])
    log(f"  warmed {user} in {time.perf_counter() - started:.1f} s")


def _spec(server: DovecotServer, user: str) -> dict[str, Any]:
    return {
        "host": server.host,
        "port": server.imaps_port,
        "username": user,
        "password": server.password(user),
        "ca_file": str(server.ca_file),
    }


def _config(
    server: DovecotServer, user: str, db: Path, path: Path, fetch_batch: int | None = None
) -> Path:
    text = toml_table("[database]", {"path": db}) + account_table(
        server, user, fetch_batch=fetch_batch
    )
    path.write_text(text, encoding="utf-8")
    return path


# -- the variants ---------------------------------------------------------------------------------


def run_floor(
    server: DovecotServer, user: str, work: Path, fetch_batch: int | None = None
) -> dict[str, Any]:
    spec_path = work / f"{user}.json"
    spec = _spec(server, user)
    if fetch_batch:
        spec["fetch_batch"] = fetch_batch
    spec_path.write_text(json.dumps(spec))
    db = work / f"floor-{time.time_ns()}.db"
    script = str(Path(__file__).with_name("_imap_children.py"))
    child = run_child([PYTHON, script, "floor", str(spec_path), str(db)], cwd=REPO).check()
    _remove_db(db)
    report = child.report()
    return {
        "wall": child.wall,
        "rss_mb": child.max_rss_mb,
        "fetched": report["fetched"],
        "new": report["new"],
        "rss_after_search_mb": report["rss_after_search_mb"],
    }


def run_backfill(
    server: DovecotServer,
    user: str,
    work: Path,
    fetch_batch: int | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    db = work / f"backfill-{time.time_ns()}.db"
    config = _config(server, user, db, work / f"{user}.toml", fetch_batch)
    argv = [
        PYTHON,
        "-m",
        "inbound_mail",
        "--config",
        str(config),
        "backfill",
        "--account",
        user,
        "--no-deliver",
        *(["--workers", str(workers)] if workers is not None else []),
    ]
    child = run_child(argv, cwd=work).check()
    _remove_db(db)
    match = _SUMMARY.search(child.stderr)
    if match is None:
        raise RuntimeError(f"no summary in the backfill's output:\n{child.stderr[-2000:]}")
    read, new = int(match.group(1)), int(match.group(2))
    return {
        "wall": child.wall,
        "rss_mb": child.max_rss_mb,
        "tree_rss_mb": child.tree_rss_mb,
        "fetched": read,
        "new": new,
    }


def _remove_db(db: Path) -> None:
    for path in db.parent.glob(f"{db.name}*"):
        path.unlink()


# -- orchestration -------------------------------------------------------------------------------


def backfill_results(
    server: DovecotServer,
    users: dict[int, str],
    work: Path,
    repeat: int,
    timebox: float,
    extra_batch: int | None = None,
    extra_floor_batch: int | None = None,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for size, user in users.items():
        variants: dict[str, Callable[[], dict[str, Any]]] = {
            "floor": partial(run_floor, server, user, work),
            "backfill-w1": partial(run_backfill, server, user, work, workers=1),
            "backfill": partial(run_backfill, server, user, work),
        }
        if extra_floor_batch:  # diagnostics: other transaction sizes (see README.md)
            name = f"floor fetch_batch={extra_floor_batch}"
            variants[name] = partial(run_floor, server, user, work, extra_floor_batch)
        if extra_batch:
            name = f"backfill fetch_batch={extra_batch}"
            variants[name] = partial(run_backfill, server, user, work, extra_batch)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        for _ in range(repeat):
            for name, runner in variants.items():
                runs[name].append(runner())
                log(f"  {size:>7,} {name:<11} {runs[name][-1]['wall']:.1f} s")
        entry = {name: _median(r, size) for name, r in runs.items()}
        if size == min(users):
            getmail = run_getmail(server, user, work, timebox)
            if "wall" in getmail:
                getmail["msg_per_s"] = rate(getmail["fetched"], getmail["wall"])
                log(
                    f"  {size:>7,} getmail6 {getmail['wall']:.1f} s, {getmail['fetched']:,} fetched"
                )
            entry["getmail6"] = getmail
        results[str(size)] = entry
    return results


def _median(runs: list[dict[str, Any]], size: int) -> dict[str, Any]:
    walls = [r["wall"] for r in runs]
    best = runs[walls.index(statistics.median_low(walls))]
    tree = max((r.get("tree_rss_mb", float("nan")) for r in runs), default=float("nan"))
    return {**best, "msg_per_s": rate(size, best["wall"]), "walls": walls, "tree_rss_mb": tree}


def push_results(server: DovecotServer, work: Path, count: int, window: float) -> dict[str, Any]:
    push_dir = work / "push"
    push_dir.mkdir()
    result: PushResult = measure_push(server, "push", push_dir, count=count, idle_window=window)
    summary: dict[str, Any] = {"count": count, "missed": result.missed}
    for kind in ("raw", "commit", "sink"):
        values = getattr(result, f"{kind}_ms")
        summary[kind] = {
            "p50": percentile(values, 0.5),
            "p99": percentile(values, 0.99),
            "max": max(values, default=float("nan")),
            "n": len(values),
        }
    summary["idle"] = {
        "window_s": result.idle_window,
        "daemon_cpu_s": result.daemon_cpu_s,
        "baseline_cpu_s": result.baseline_cpu_s,
        "daemon_rss_mb": result.daemon_rss_mb,
    }
    return summary


# -- tables ---------------------------------------------------------------------------------------


def render(backfill: dict[str, Any], push: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    verdict: dict[str, Any] = {}
    table = Table(
        "IMAP backfill (msg/s over the folder's messages; peak RSS of the child, and summed PSS"
        " of its whole process tree, parse workers included: the largest of the runs)",
        [
            "folder",
            "variant",
            "fetched",
            "seconds",
            "msg/s",
            "vs floor",
            "peak RSS MB",
            "tree MB",
        ],
    )
    for size, entry in backfill.items():
        floor = entry["floor"]["msg_per_s"]
        for name, r in entry.items():
            if "missing" in r:
                table.add(int(size), name, "-", "-", "-", "-", r["missing"], "-")
                continue
            label = name + (" (time-boxed)" if r.get("timed_out") else "")
            table.add(
                int(size),
                label,
                r["fetched"],
                f"{r['wall']:.1f}",
                round(r["msg_per_s"]),
                f"{r['msg_per_s'] / floor:.2f}x",
                f"{r['rss_mb']:.0f}",
                f"{r.get('tree_rss_mb', float('nan')):.0f}",
            )
        verdict[f"backfill_vs_floor_{size}"] = entry["backfill"]["msg_per_s"] / floor
        if entry.get("getmail6", {}).get("msg_per_s"):  # 0: time-boxed before one message
            verdict["backfill_vs_getmail"] = (
                entry["backfill"]["msg_per_s"] / entry["getmail6"]["msg_per_s"]
            )
        verdict.setdefault("backfill_rss_mb", {})[size] = entry["backfill"]["tree_rss_mb"]
    _backfill_notes(table, verdict)
    searched = ", ".join(
        f"{int(size):,}: {entry['floor'].get('rss_after_search_mb', float('nan')):.0f} MB"
        for size, entry in backfill.items()
    )
    table.notes.append(
        f"floor's VmHWM right after its UID SEARCH (the UID list of the folder): {searched}"
    )
    text = table.render()
    if push is not None:
        text += "\n" + _push_tables(push, verdict)
    return text, verdict


def _backfill_notes(table: Table, verdict: dict[str, Any]) -> None:
    ratios = [v for k, v in verdict.items() if k.startswith("backfill_vs_floor_")]
    table.notes.append(
        f"goal: backfill >= {GOAL_FLOOR:.1f}x the floor: {min(ratios):.2f}x at worst -> "
        + ("met" if min(ratios) >= GOAL_FLOOR else "MISSED")
    )
    if "backfill_vs_getmail" in verdict:
        x = verdict["backfill_vs_getmail"]
        table.notes.append(
            f"goal: backfill >= {GOAL_GETMAIL:.0f}x getmail6 (on the smallest folder): "
            f"{x:.1f}x -> " + ("met" if x >= GOAL_GETMAIL else "MISSED")
        )
    rss = list(verdict["backfill_rss_mb"].values())
    table.notes.append(
        f"goal: process tree < {GOAL_RSS_MB:.0f} MB: {max(rss):.0f} MB at most -> "
        + ("met" if max(rss) < GOAL_RSS_MB else "MISSED")
    )
    if len(rss) > 1:  # flatness needs two sizes
        table.notes.append(
            f"goal: RSS flat as the folder grows: backfill {min(rss):.0f}-{max(rss):.0f} MB -> "
            + ("met" if max(rss) - min(rss) < 15 else "MISSED")
        )


def _push_tables(push: dict[str, Any], verdict: dict[str, Any]) -> str:
    table = Table(
        f"Push latency over {push['count']} APPENDs, one at a time (ms after APPEND completed)",
        ["path", "p50", "p99", "max", "samples", "missed"],
    )
    names = {
        "raw": "bare imapclient IDLE: * EXISTS",
        "commit": "daemon: SMS row committed",
        "sink": "daemon: jsonl line out of the sink",
    }
    for kind, label in names.items():
        r = push[kind]
        table.add(
            label,
            f"{r['p50']:.0f}",
            f"{r['p99']:.0f}",
            f"{r['max']:.0f}",
            r["n"],
            push["missed"][kind],
        )
    d50 = push["commit"]["p50"] - push["raw"]["p50"]
    d99 = push["commit"]["p99"] - push["raw"]["p99"]
    verdict.update(push_p50_delta_ms=d50, push_p99_delta_ms=d99)
    table.notes.append(
        f"goal: commit p50 within {GOAL_P50_MS:.0f} ms of raw IDLE: {d50:+.0f} ms -> "
        + ("met" if d50 <= GOAL_P50_MS else "MISSED")
    )
    table.notes.append(
        f"goal: commit p99 within {GOAL_P99_MS:.0f} ms of raw IDLE: {d99:+.0f} ms -> "
        + ("met" if d99 <= GOAL_P99_MS else "MISSED")
    )
    idle = push["idle"]
    cpu = Table(
        f"CPU while IDLE waits ({idle['window_s']:.0f} s, nothing arriving)",
        ["process", "CPU ms", "% of one core"],
    )
    for label, key in (
        ("inbound-mail run (daemon, 1 account, 1 sink)", "daemon_cpu_s"),
        ("bare imapclient IDLE (idle_check 1 s)", "baseline_cpu_s"),
    ):
        cpu.add(label, f"{1000 * idle[key]:.0f}", f"{100 * idle[key] / idle['window_s']:.2f}")
    cpu.notes.append("CPU time from /proc/PID/stat, in clock ticks of 10 ms")
    cpu.notes.append(f"daemon peak RSS (VmHWM) after the pushes: {idle['daemon_rss_mb']:.0f} MB")
    verdict["idle_cpu_percent"] = 100 * idle["daemon_cpu_s"] / idle["window_s"]
    return table.render() + "\n" + cpu.render()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--messages", type=int, nargs="+", help="folder sizes [default: 10000 100000]"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 1k and 5k, 20 pushes, 5 s idle"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per backfill variant; the median is shown"
    )
    parser.add_argument("--pushes", type=int, help="APPENDs for the push latency [default: 200]")
    parser.add_argument(
        "--idle-window", type=float, help="seconds of idle CPU measurement [default: 10]"
    )
    parser.add_argument(
        "--getmail-timebox", type=float, help="seconds getmail6 may run [default: 60]"
    )
    parser.add_argument("--no-push", action="store_true", help="skip push latency and idle CPU")
    parser.add_argument(
        "--extra-fetch-batch", type=int, help="also run backfill with this fetch_batch (diagnostic)"
    )
    parser.add_argument(
        "--extra-floor-fetch-batch",
        type=int,
        help="also run the floor with chunks of this size (diagnostic)",
    )
    parser.add_argument(
        "--json", type=Path, help="write the figures here [default: results/imap.json]"
    )
    args = parser.parse_args(argv)
    sizes = sorted(args.messages or ([1000, 5000] if args.quick else [10_000, 100_000]))
    pushes = args.pushes or (20 if args.quick else 200)
    window = args.idle_window or (5.0 if args.quick else 10.0)
    timebox = args.getmail_timebox or (15.0 if args.quick else 60.0)
    info = machine()
    print_machine(info)
    with tempfile.TemporaryDirectory(prefix="imap-bench-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # getmail6 delivers as nobody, who must reach its Maildir
        with DovecotServer(work / "dovecot", users={}) as server:
            users = load_server(server, sizes)
            backfill = backfill_results(
                server,
                users,
                work,
                args.repeat,
                timebox,
                args.extra_fetch_batch,
                args.extra_floor_fetch_batch,
            )
            push = None if args.no_push else push_results(server, work, pushes, window)
    text, verdict = render(backfill, push)
    print(text)
    data = {"machine": info, "backfill": backfill, "push": push, "verdict": verdict, "table": text}
    save_results("imap", data, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
