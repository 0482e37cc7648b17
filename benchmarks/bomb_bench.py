"""CPU time and peak memory of ``parse_email`` per crafted email (issue 11 item 1).

The corpus is generated, never committed: :func:`testsupport.bombs.bombs`
builds every kind (a body declared ``charset=punycode``, ~70k encoded words in a
Subject, ~100k ``Content-Type`` parameters, ~90k addresses in From, ~60k To
headers, encoded words in the display name, ``Content-Disposition`` parameters,
thousands of MIME parts, 5,000 nested multiparts, codecs that are not charsets,
and the same attacks kept inside a 64 KiB header block so that each limit is
hit), each under 1 MiB (the default ``max_size``), from the provider and from a
stranger.  ``--write DIR`` saves them as ``.eml`` files to look at.

Each email is parsed in a child process of its own (peak RSS is that child's,
interpreter and imports included), ``--repeat`` times; the row shows the
slowest CPU time (``time.process_time``).  The baseline, measured in the same
run the same way, is an ordinary provider email.  Goals: every email under
100 ms of CPU and 200 MB.

    .venv/bin/python benchmarks/bomb_bench.py [--repeat 3] [--only NAME] [--write DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import PYTHON, RESULTS_DIR, child_report, machine, print_machine, run_child

from inbound_mail.testing.emails import build_provider_email
from testsupport.bombs import bombs

GOAL_CPU_MS = 100.0
GOAL_RSS_MB = 200.0
BASELINE = "baseline_provider_email"


def _corpus() -> dict[str, tuple[bytes, str]]:
    normal = build_provider_email("+393331234567", "+393339876543", "20240102030405", "Ciao")
    return {BASELINE: (normal, "SmsRecord"), **bombs()}


def child(name: str, repeat: int) -> None:
    from inbound_mail.parse.message import parse_email

    raw, expected = _corpus()[name]
    parse_email(_corpus()[BASELINE][0])  # imports and caches warm, as in the daemon
    worst = 0.0
    outcome: object = None
    for _ in range(repeat):
        started = time.process_time()
        outcome = parse_email(raw)
        worst = max(worst, time.process_time() - started)
    child_report(
        {
            "cpu_ms": worst * 1000,
            "bytes": len(raw),
            "outcome": type(outcome).__name__,
            "expected": expected,
            "reason": str(getattr(outcome, "reason", ""))[:100],
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="parses per email (default 3)")
    parser.add_argument("--only", help="only the kinds whose name contains this")
    parser.add_argument("--write", type=Path, help="write the corpus as .eml files here, and stop")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "bombs.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.repeat)
        return 0
    corpus = _corpus()
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        for name, (raw, _) in corpus.items():
            (args.write / f"{name}.eml").write_bytes(raw)
        print(f"{len(corpus)} emails written to {args.write}")
        return 0
    info = machine()
    print_machine(info)
    rows = []
    print(f"{'email':38} {'bytes':>8} {'CPU ms':>8} {'RSS MB':>7}  outcome     reason")
    for name in corpus:
        if args.only and args.only not in name and name != BASELINE:
            continue
        done = run_child([PYTHON, __file__, "--child", name, "--repeat", str(args.repeat)])
        report = done.report() if done.returncode == 0 else {}
        row = {"email": name, "rss_mb": round(done.max_rss_mb, 1), **report}
        rows.append(row)
        flag = "" if report.get("outcome") == report.get("expected") else "  UNEXPECTED"
        print(
            f"{name:38} {report.get('bytes', 0):>8} {report.get('cpu_ms', float('nan')):>8.1f} "
            f"{done.max_rss_mb:>7.1f}  {report.get('outcome', 'CRASHED'):11} "
            f"{report.get('reason', '')[:60]}{flag}"
        )
    worst_cpu = max(row.get("cpu_ms", float("inf")) for row in rows)
    worst_rss = max(row["rss_mb"] for row in rows)
    met = worst_cpu < GOAL_CPU_MS and worst_rss < GOAL_RSS_MB
    print(
        f"\nworst: {worst_cpu:.1f} ms CPU (goal < {GOAL_CPU_MS:g}), {worst_rss:.1f} MB "
        f"(goal < {GOAL_RSS_MB:g}): {'met' if met else 'MISSED'}"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"machine": info, "repeat": args.repeat, "rows": rows}, indent=2) + "\n"
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
