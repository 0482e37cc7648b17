"""Run a command and report its own peak RSS, uncontaminated by the benchmark's.

On Linux a child's ``ru_maxrss`` starts at the RSS of the process it was forked
(or vforked) from: every child of a 60 MB benchmark would show at least 60 MB.
This small launcher forks the command itself and writes ``{"max_rss_kb",
"wall"}`` of it to ``REPORT`` as JSON; a SIGTERM it gets is passed on.

    python -S benchmarks/_launch.py REPORT COMMAND [ARG ...]
"""

import json
import os
import signal
import sys
import time

report, argv = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(argv[0], argv)
signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(pid, signal.SIGTERM))
while True:
    try:
        _, status, usage = os.wait4(pid, 0)
        break
    except InterruptedError:
        continue
wall = time.perf_counter() - started
with open(report, "w") as out:
    json.dump({"max_rss_kb": usage.ru_maxrss, "wall": wall}, out)
sys.exit(os.waitstatus_to_exitcode(status))
