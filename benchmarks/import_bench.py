"""``inbound-mail import`` of an mbox and a Maildir against the least an importer built on
mail-parser spends (one process: the floor).

Variants, each in a child process of its own (wall time and peak RSS are that child's):

``read``      the mbox splitter alone (``inbound_mail.sources.local.iter_emails``)
``floor``     the same splitter + ``mailparser.parse_from_bytes`` + the four fields cut out
              with one regex + ``executemany`` into SQLite, one transaction per 1,000
              (WAL, ``synchronous=FULL`` like the store): nothing else
``parse``     the splitter + ``parse_email``, storing nothing (diagnostic:
              what the parser adds over bare mail-parser)
``import``    the real CLI: ``python -m inbound_mail --db DB import MBOX`` (its default
              ``--batch-size`` and ``--workers``, the shipped ones: a parse process per
              core, at most 4)
``import-w1`` the CLI with ``--workers 1``: no pool, the writer parses (the old path)

Diagnostics, run only when named in ``--variants``: ``import-batchN`` (the CLI with
``--batch-size N``), ``import-wN`` (``--workers N``) and ``floor-batchN`` (the floor with a
transaction per N rows).  The goal is always measured against ``floor``.

Goal (issue 15): import >= 1.6x the floor's throughput on 2 cores; peak RSS of the
whole process tree (parse workers included) < 150 MB and flat from 10k to 100k.

    .venv/bin/python benchmarks/import_bench.py                 # 10k and 100k messages
    .venv/bin/python benchmarks/import_bench.py --quick         # 1k and 5k, a smoke run
    .venv/bin/python benchmarks/import_bench.py --messages 20000 --repeat 3
    .venv/bin/python benchmarks/import_bench.py --variants floor floor-batch10000 import-batch1000
    .venv/bin/python benchmarks/import_bench.py --formats maildir   # mbox and maildir by default
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    PYTHON,
    REPO,
    Child,
    Table,
    child_report,
    machine,
    print_machine,
    provider_emails,
    rate,
    run_child,
    save_results,
    write_mbox,
)

GOAL_RATIO = 1.6
GOAL_RSS_MB = 150.0
GOAL_FLAT_MB = 15.0
VARIANTS = ("read", "floor", "import-w1", "import")
FORMATS = ("mbox", "maildir")
FLOOR_BATCH = 1000
# Diagnostics: the CLI or the floor with another transaction size (README.md, "what costs").
_BATCH_VARIANT = re.compile(r"(import|floor)-batch([1-9][0-9]*)")
_WORKERS_VARIANT = re.compile(r"import-w([0-9]+)")
_SUMMARY = re.compile(
    r"imported: (\d+) read, (\d+) new, (\d+) duplicates, (\d+) skipped, (\d+) rejected"
)

# -- the children ---------------------------------------------------------------------------------


def child_read(mbox: Path) -> dict[str, Any]:
    from inbound_mail.sources.local import iter_emails

    count = sum(1 for _ in iter_emails([mbox]))
    return {"read": count}


def child_parse(mbox: Path) -> dict[str, Any]:
    from inbound_mail.models import Rejected, SmsRecord
    from inbound_mail.parse.message import parse_email
    from inbound_mail.sources.local import iter_emails

    counts = {"read": 0, "new": 0, "skipped": 0, "rejected": 0}
    for raw, _origin in iter_emails([mbox]):
        outcome = parse_email(raw)
        counts["read"] += 1
        kind = (
            "new"
            if isinstance(outcome, SmsRecord)
            else "rejected"
            if isinstance(outcome, Rejected)
            else "skipped"
        )
        counts[kind] += 1
    return counts


def child_floor(mbox: Path, db: Path, batch: int) -> dict[str, Any]:
    from _floor import FloorDb, floor_row

    from inbound_mail.sources.local import iter_emails

    store = FloorDb(db)
    counts = {"read": 0, "skipped": 0, "rejected": 0}
    for raw, _origin in iter_emails([mbox]):
        counts["read"] += 1
        row = floor_row(raw)
        if row is None:
            counts["skipped"] += 1
            continue
        store.add(row)
        if len(store.rows) == batch:
            store.flush()
    store.close()
    return {**counts, "new": store.inserted}


def run_child_mode(mode: str, mbox: Path, db: Path) -> None:
    started = time.perf_counter()
    if mode == "read":
        report = child_read(mbox)
    elif mode == "parse":
        report = child_parse(mbox)
    else:
        batch = _BATCH_VARIANT.fullmatch(mode)
        report = child_floor(mbox, db, int(batch.group(2)) if batch else FLOOR_BATCH)
    child_report({**report, "work_seconds": time.perf_counter() - started})


# -- the parent ------------------------------------------------------------------------------


def measure(variant: str, mbox: Path, work: Path) -> dict[str, Any]:
    db = work / f"{variant}-{time.time_ns()}.db"
    if variant.startswith("import"):
        argv = [PYTHON, "-m", "inbound_mail", "--db", str(db), "import", str(mbox)]
        if workers := _WORKERS_VARIANT.fullmatch(variant):
            argv += ["--workers", workers.group(1)]
        elif variant != "import":
            argv += ["--batch-size", variant.removeprefix("import-batch")]
        # The corpus is unsigned: import it with authenticate = "off" (the pipeline's
        # cost; trust_bench.py measures the check's).  cwd: no stray ./inbound-mail.toml.
        unchecked = work / "unchecked.toml"
        unchecked.write_text('[parse]\nauthenticate = "off"\n', encoding="utf-8")
        child = run_child(argv, cwd=work, env={"INBOUND_MAIL_CONFIG": str(unchecked)}).check()
        counts = _import_counts(child)
    else:
        argv = [PYTHON, __file__, "--child", variant, str(mbox), str(db)]
        child = run_child(argv, cwd=REPO).check()
        counts = child.report()
    size = sum(p.stat().st_size for p in work.glob(f"{db.name}*")) / 1e6
    for path in work.glob(f"{db.name}*"):
        path.unlink()
    return {
        "variant": variant,
        "wall": child.wall,
        "rss_mb": child.max_rss_mb,
        "tree_rss_mb": child.tree_rss_mb,
        "db_mb": size,
        **counts,
    }


def _import_counts(child: Child) -> dict[str, Any]:
    match = _SUMMARY.search(child.stderr)
    if match is None:
        raise RuntimeError(f"no summary in the import's output:\n{child.stderr[-2000:]}")
    read, new, duplicates, skipped, rejected = map(int, match.groups())
    return {
        "read": read,
        "new": new,
        "duplicates": duplicates,
        "skipped": skipped,
        "rejected": rejected,
    }


def run(
    sizes: Sequence[int],
    variants: Sequence[str],
    repeat: int,
    work: Path,
    formats: Sequence[str] = ("mbox",),
) -> dict[str, Any]:
    corpus = work / "corpus"
    corpus.mkdir(exist_ok=True)
    started = time.perf_counter()
    for size in sizes:
        if "mbox" in formats:
            write_mbox(corpus / f"{size}.mbox", islice(provider_emails(max(sizes)), size))
        if "maildir" in formats:
            write_maildir(corpus / f"{size}.maildir", islice(provider_emails(max(sizes)), size))
    print(f"corpus written in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    results: dict[str, Any] = {}
    for form in formats:
        for size in sizes:
            source = corpus / f"{size}.{form}"
            runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
            for _ in range(repeat):  # interleaved: drifting load hits every variant alike
                for variant in variants:
                    runs[variant].append(measure(variant, source, work))
                    print(
                        f"  {form:<7} {size:>7,} {variant:<9} {runs[variant][-1]['wall']:.1f} s",
                        file=sys.stderr,
                    )
            key = str(size) if form == "mbox" else f"{size} {form}"
            results[key] = {
                "format": form,
                "mbox_mb": _size_mb(source),
                "variants": {v: _median_run(r, size) for v, r in runs.items()},
            }
    return results


def write_maildir(path: Path, raws: Iterable[bytes]) -> int:
    """A Maildir (cur/new/tmp) with one file per email in ``new``."""
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    count = 0
    for count, raw in enumerate(raws, 1):
        (path / "new" / f"{count:08d}.bench:2,").write_bytes(raw)
    return count


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def _median_run(runs: list[dict[str, Any]], size: int) -> dict[str, Any]:
    walls = [r["wall"] for r in runs]
    best = runs[walls.index(statistics.median_low(walls))]
    trees = [r["tree_rss_mb"] for r in runs]
    return {**best, "msg_per_s": rate(size, best["wall"]), "walls": walls,
            "tree_rss_mb": max(trees)}  # fmt: skip


def render(results: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    table = Table(
        "Import of an mbox / a Maildir (msg/s over every email; peak RSS of the child, and of"
        " its whole process tree, parse workers included: the largest of the runs)",
        [
            "messages",
            "variant",
            "seconds",
            "msg/s",
            "vs floor",
            "peak RSS MB",
            "tree RSS MB",
            "DB MB",
            "new / skipped / rejected",
        ],
    )
    verdict: dict[str, Any] = {"rss_mb": {}}
    for size, data in results.items():
        variants = data["variants"]
        floor = variants.get("floor", {}).get("msg_per_s")
        for name, r in variants.items():
            ratio = f"{r['msg_per_s'] / floor:.0%}" if floor else "-"
            counts = (
                "-" if name == "read" else f"{r['new']:,} / {r['skipped']:,} / {r['rejected']:,}"
            )
            table.add(
                size,
                name,
                f"{r['wall']:.1f}",
                round(r["msg_per_s"]),
                ratio,
                f"{r['rss_mb']:.0f}",
                f"{r.get('tree_rss_mb', float('nan')):.0f}",
                f"{r['db_mb']:.0f}",
                counts,
            )
        if "import" in variants and floor:
            verdict[f"ratio_{size}"] = variants["import"]["msg_per_s"] / floor
            verdict["rss_mb"][size] = variants["import"]["tree_rss_mb"]
    ratios = [v for k, v in verdict.items() if k.startswith("ratio_")]
    rss = list(verdict["rss_mb"].values())
    if ratios:
        table.notes.append(
            f"goal: import >= {GOAL_RATIO:.1f}x the floor: {min(ratios):.2f}x at worst -> "
            + ("met" if min(ratios) >= GOAL_RATIO else "MISSED")
        )
    if rss:
        table.notes.append(
            f"goal: peak tree RSS < {GOAL_RSS_MB:.0f} MB: {max(rss):.0f} MB at most -> "
            + ("met" if max(rss) < GOAL_RSS_MB else "MISSED")
        )
    mbox_rss = [v for k, v in verdict["rss_mb"].items() if " " not in k]
    if len(mbox_rss) > 1:  # flatness needs two sizes
        rss = mbox_rss
        flat = max(rss) - min(rss)
        table.notes.append(
            f"goal: peak RSS flat as the mbox grows: {min(rss):.0f}-{max(rss):.0f} MB "
            f"(spread {flat:.0f} MB) -> " + ("met" if flat < GOAL_FLAT_MB else "MISSED")
        )
    return table.render(), verdict


def _variant(name: str) -> str:
    if name in VARIANTS or _BATCH_VARIANT.fullmatch(name) or _WORKERS_VARIANT.fullmatch(name):
        return name
    raise argparse.ArgumentTypeError(f"unknown variant {name!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--messages", type=int, nargs="+", help="mbox sizes [default: 10000 100000]"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1000 and 5000 messages")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per variant; the median is shown"
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        type=_variant,
        default=list(VARIANTS),
        help=f"any of {', '.join(VARIANTS)}, import-batchN, floor-batchN [default: the four]",
    )
    parser.add_argument(
        "--formats", nargs="+", choices=FORMATS, default=list(FORMATS), help="[default: both]"
    )
    parser.add_argument(
        "--json", type=Path, help="write the figures here [default: results/import.json]"
    )
    parser.add_argument("--child", nargs=3, metavar=("MODE", "MBOX", "DB"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child_mode(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return 0
    sizes = args.messages or ([1000, 5000] if args.quick else [10_000, 100_000])
    info = machine()
    print_machine(info)
    with tempfile.TemporaryDirectory(prefix="import-bench-") as tmp:
        results = run(sorted(sizes), args.variants, args.repeat, Path(tmp), args.formats)
    text, verdict = render(results)
    print(text)
    save_results(
        "import",
        {"machine": info, "results": results, "verdict": verdict, "table": text},
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
