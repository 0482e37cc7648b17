"""Run every benchmark (full or ``--quick``) and print ONE table of the figures against the goals.

Each script writes ``benchmarks/results/NAME.json``; this one runs them in turn
(each in its own process), then reads those files and the fault-injection
suite's ``benchmarks/results/faults.json`` (written by
``INBOUND_MAIL_FAULT_RESULTS=1 pytest -m faults``).

    .venv/bin/python benchmarks/run_all.py             # full sizes, ~15 minutes
    .venv/bin/python benchmarks/run_all.py --quick     # smoke run, ~3 minutes
    .venv/bin/python benchmarks/run_all.py --report    # just print the table from results/
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH_DIR, PYTHON, REPO, RESULTS_DIR, Table

SCRIPTS = {"import": "import_bench.py", "imap": "imap_bench.py", "delivery": "delivery_bench.py"}
FAULTS = RESULTS_DIR / "faults.json"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS_DIR / f"{name}.json"
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def import_rows(table: Table, data: dict[str, Any]) -> None:
    rss: dict[str, list[tuple[int, float]]] = {}
    for key, entry in data["results"].items():
        v = entry["variants"]
        if "import" not in v or "floor" not in v:
            continue
        size, form = int(key.split()[0]), entry.get("format", "mbox")
        ratio = v["import"]["msg_per_s"] / v["floor"]["msg_per_s"]
        table.add(
            f"import ({form})",
            f"{size:,} msg/s",
            round(v["import"]["msg_per_s"]),
            f"floor {v['floor']['msg_per_s']:,.0f}",
            f"{ratio:.2f}x (>= 1.6x: {_met(ratio >= 1.6)})",
        )
        # The whole process tree (parse workers included) when measured.
        mb = v["import"].get("tree_rss_mb", v["import"]["rss_mb"])
        rss.setdefault(form, []).append((size, mb))
    for form, figures in rss.items():
        for size, mb in figures:
            table.add(
                f"import ({form})", f"peak RSS at {size:,}", f"{mb:.0f} MB", "-",
                _rss_verdict(figures),
            )  # fmt: skip


def _rss_verdict(rss: list[tuple[int, float]]) -> str:
    values = [mb for _, mb in rss]
    budget = f"< 150 MB: {_met(max(values) < 150)}"
    if len(values) < 2:  # flatness needs two sizes
        return budget
    spread = max(values) - min(values)
    return f"{budget}; flat: {_met(spread < 15)} ({spread:+.0f} MB)"


def imap_rows(table: Table, data: dict[str, Any]) -> None:
    rss = []
    for size, entry in data["backfill"].items():
        ours, floor = entry["backfill"], entry["floor"]
        ratio = ours["msg_per_s"] / floor["msg_per_s"]
        table.add(
            "IMAP backfill",
            f"{int(size):,} msg/s",
            round(ours["msg_per_s"]),
            f"floor {floor['msg_per_s']:,.0f}",
            f"{ratio:.2f}x (>= 1.6x: {_met(ratio >= 1.6)})",
        )
        getmail = entry.get("getmail6", {})
        if getmail.get("msg_per_s"):  # 0 when the time box ended before its first message
            x = ours["msg_per_s"] / getmail["msg_per_s"]
            boxed = ", time-boxed" if getmail.get("timed_out") else ""
            table.add(
                "IMAP backfill",
                f"{int(size):,} vs getmail6",
                round(ours["msg_per_s"]),
                f"getmail6 {getmail['msg_per_s']:,.0f} ({getmail['fetched']:,} msgs{boxed})",
                f"{x:.1f}x (>= 10x: {_met(x >= 10)})",
            )
        rss.append((int(size), ours.get("tree_rss_mb", ours["rss_mb"])))
    for size, mb in rss:
        table.add("IMAP backfill", f"peak RSS at {size:,}", f"{mb:.0f} MB", "-", _rss_verdict(rss))
    push = data.get("push")
    if not push:
        return
    raw, commit, sink = push["raw"], push["commit"], push["sink"]
    for q, limit in (("p50", 10), ("p99", 150)):
        delta = commit[q] - raw[q]
        table.add(
            "push latency",
            f"APPEND -> row committed, {q}",
            f"{commit[q]:.0f} ms",
            f"bare IDLE {raw[q]:.0f} ms",
            f"{delta:+.0f} ms (<= +{limit}: {_met(delta <= limit)})",
        )
        table.add(
            "push latency",
            f"APPEND -> jsonl sink line, {q}",
            f"{sink[q]:.0f} ms",
            f"bare IDLE {raw[q]:.0f} ms",
            f"{sink[q] - raw[q]:+.0f} ms",
        )
    idle = push["idle"]
    pct = 100 * idle["daemon_cpu_s"] / idle["window_s"]
    base = 100 * idle["baseline_cpu_s"] / idle["window_s"]
    table.add(
        "idle",
        f"CPU over {idle['window_s']:.0f} s of IDLE",
        f"{pct:.2f} % of a core",
        f"bare IDLE {base:.2f} %",
        f"near zero: {_met(pct < 1.0)}",
    )


def delivery_rows(table: Table, data: dict[str, Any]) -> None:
    keyed = {(r["sink"], r["parallel"], r["mode"]): r for r in data["throughput"]}
    for (sink, parallel, mode), r in keyed.items():
        if mode != "inbound-mail":
            continue
        floor = keyed[(sink, parallel, "floor")]
        table.add(
            "delivery",
            f"{sink}, parallel {parallel}",
            f"{r['per_s']:,.0f}/s",
            f"floor {floor['per_s']:,.0f}/s",
            f"{r['per_s'] / floor['per_s']:.0%} of the floor",
        )
    lat = data["latency"]
    base = next((r for r in lat if r["variant"].startswith("bare")), None)
    for r in lat:
        if r is base:
            continue
        baseline = f"bare POST {base['p50']:.1f} / {base['p99']:.1f}" if base else "-"
        table.add(
            "delivery",
            f"commit -> POST, {r['variant'].removeprefix('DeliveryWorker, ')}",
            f"p50 {r['p50']:.1f} / p99 {r['p99']:.1f} ms",
            baseline,
            "-",
        )


def fault_rows(table: Table) -> None:
    if not FAULTS.is_file():
        table.add("fault matrix", "run `pytest -m faults` first", "-", "-", "-")
        return
    try:
        data: Any = json.loads(FAULTS.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        table.add("fault matrix", f"unreadable {FAULTS.name}: {exc}", "-", "-", "-")
        return
    for name, outcome, goal in _fault_entries(data):
        table.add("fault matrix", name, outcome, "-", goal)


def _fault_entries(data: Any) -> list[tuple[str, str, str]]:
    """(name, outcome, detail) from the suite's JSON, whatever its exact shape:
    a list of objects, an object holding such a list, or a {name: outcome} object."""
    if isinstance(data, dict):
        for key in ("results", "rows", "matrix", "faults", "tests"):
            if isinstance(data.get(key), list | dict):
                return _fault_entries(data[key])
        return [
            (str(k), _short(v), "") if not isinstance(v, dict) else _entry(str(k), v)
            for k, v in data.items()
        ]
    if isinstance(data, list):
        return [
            _entry(None, item) if isinstance(item, dict) else (str(item), "", "") for item in data
        ]
    return [("faults.json", _short(data), "")]


def _pick(item: dict[str, Any], *keys: str) -> Any:
    return next((item[k] for k in keys if k in item), None)


def _entry(name: str | None, item: dict[str, Any]) -> tuple[str, str, str]:
    """(what, figures, verdict) of one fault test.  The suite writes
    ``{test: {sent, delivered, lost, duplicated, resent, seconds}}``."""
    title = name or str(_pick(item, "fault", "name", "scenario", "test", "id") or "?")
    title = title.removeprefix("test_").replace("_", " ")
    if "lost" in item or "duplicated" in item:
        lost, duplicated = item.get("lost", 0), item.get("duplicated", 0)
        shown = ("sent", "delivered", "resent", "seconds")
        figures = ", ".join(f"{k} {item[k]}" for k in shown if k in item)
        verdict = f"lost {lost}, duplicated {duplicated}: " + _met(lost == 0 and duplicated == 0)
        return title, figures, verdict
    outcome = _pick(item, "outcome", "result", "status", "passed", "ok")
    used = {"fault", "name", "scenario", "test", "id", "outcome", "result", "status", "passed"}
    detail = "; ".join(f"{k}={_short(v)}" for k, v in item.items() if k not in used)
    return title, _short(outcome) + (f" ({detail})" if detail else ""), "-"


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def summary() -> str:
    table = Table(
        "inbound-mail benchmarks: one table",
        ["area", "measure", "inbound-mail", "baseline (same run)", "goal"],
    )
    machine: dict[str, str] | None = None
    for name, rows in (("import", import_rows), ("imap", imap_rows), ("delivery", delivery_rows)):
        data = _load(name)
        if data is None:
            table.add(name, f"no results: run benchmarks/{SCRIPTS[name]}", "-", "-", "-")
            continue
        machine = machine or data.get("machine")
        rows(table, data)
    fault_rows(table)
    if machine:
        table.notes.append("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    return table.render()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="every script with --quick")
    parser.add_argument(
        "--report", action="store_true", help="run nothing; print the table from results/"
    )
    parser.add_argument("--only", nargs="+", choices=list(SCRIPTS), default=list(SCRIPTS))
    args = parser.parse_args(argv)
    if not args.report:
        for name in args.only:
            argv_ = [PYTHON, str(BENCH_DIR / SCRIPTS[name]), *(["--quick"] if args.quick else [])]
            print(f"== {' '.join(argv_[1:])}", flush=True)
            if subprocess.run(argv_, cwd=REPO, check=False).returncode != 0:
                print(f"{SCRIPTS[name]} failed", file=sys.stderr)
                return 1
    print()
    print(summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
