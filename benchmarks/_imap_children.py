"""The IMAP benchmark's reference programs, each run as a child process of its own.

``floor``  bare imapclient over the same TLS connection as the daemon: ``UID SEARCH FROM
           <sender>``, then ``UID FETCH BODY.PEEK[]`` in chunks of ``fetch_batch`` (200 unless
           the spec says), mail-parser, ``executemany`` (one transaction per chunk)
``idle``   bare imapclient IDLE (``idle_check`` with a 1 s timeout, as the daemon uses),
           forever: the CPU baseline of a process that only waits

    python benchmarks/_imap_children.py floor SPEC.json DB
    python benchmarks/_imap_children.py idle SPEC.json
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PROVIDER, child_report
from imapclient import IMAPClient


def connect(spec: dict[str, Any]) -> IMAPClient:
    """Logged in like the daemon: implicit TLS, verified against the test CA, NODELAY."""
    context = ssl.create_default_context(cafile=spec["ca_file"])
    client = IMAPClient(spec["host"], spec["port"], ssl=True, ssl_context=context, timeout=60)
    client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the daemon
    client.login(spec["username"], spec["password"])
    return client


def floor(spec: dict[str, Any], db: Path) -> dict[str, Any]:
    from _floor import FloorDb, floor_row

    store = FloorDb(db)
    client = connect(spec)
    client.select_folder(spec.get("folder", "INBOX"), readonly=True)
    uids = sorted(client.search(["FROM", PROVIDER]))
    rss_after_search = _vm_hwm_mb()
    size = int(spec.get("fetch_batch", 200))
    skipped = 0
    for start in range(0, len(uids), size):
        fetched = client.fetch(uids[start : start + size], ["BODY.PEEK[]"])
        for data in fetched.values():
            row = floor_row(bytes(data[b"BODY[]"]))
            if row is None:
                skipped += 1
            else:
                store.add(row)
        store.flush()
    client.logout()
    store.close()
    return {
        "fetched": len(uids),
        "new": store.inserted,
        "skipped": skipped,
        "rss_after_search_mb": rss_after_search,
    }


def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def idle(spec: dict[str, Any]) -> None:
    client = connect(spec)
    client.select_folder(spec.get("folder", "INBOX"))
    client.idle()
    print("idling", flush=True)
    while True:
        client.idle_check(timeout=1.0)


def main() -> int:
    mode, spec_path = sys.argv[1], Path(sys.argv[2])
    spec = json.loads(spec_path.read_text())
    started = time.perf_counter()
    if mode == "floor":
        report = floor(spec, Path(sys.argv[3]))
    elif mode == "idle":
        idle(spec)
        return 0
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    child_report({**report, "work_seconds": time.perf_counter() - started})
    return 0


if __name__ == "__main__":
    sys.exit(main())
