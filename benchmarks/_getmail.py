"""getmail6 as the benchmark's peer: SimpleIMAPSSLRetriever, ``read_all``, ``delete =
false``, into a Maildir (the private Dovecot of :mod:`testsupport.dovecot`), time-boxed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from _common import PYTHON, run_child

from testsupport.dovecot import DovecotServer


def run_getmail(server: DovecotServer, user: str, work: Path, timebox: float) -> dict[str, Any]:
    binary = shutil.which("getmail", path=str(Path(PYTHON).parent)) or shutil.which("getmail")
    if binary is None:
        return {"missing": "getmail6 is not installed: .venv/bin/pip install getmail6"}
    maildir = work / "getmail-Maildir"
    state = work / "getmail-state"
    for path in (maildir, state):
        shutil.rmtree(path, ignore_errors=True)  # its oldmail-* state would skip everything
    for sub in ("", "cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # getmail6 refuses to deliver as root; it delivers as nobody
            shutil.chown(maildir / sub, "nobody")
    state.mkdir()
    rc = state / "getmailrc"
    rc.write_text(
        "[retriever]\ntype = SimpleIMAPSSLRetriever\n"
        f"server = {server.host}\nport = {server.imaps_port}\nusername = {user}\n"
        f"password = {server.password(user)}\n"
        f'mailboxes = ("INBOX",)\nca_certs = {server.ca_file}\n\n'
        f"[destination]\ntype = Maildir\npath = {maildir}/\n"
        + ("user = nobody\n" if os.geteuid() == 0 else "")
        + "\n[options]\nread_all = true\ndelete = false\nverbose = 0\n"
        + "message_log_verbose = false\n",
        encoding="utf-8",
    )
    child = run_child(
        [binary, "--rcfile", str(rc), "--getmaildir", str(state)], timeout=timebox, cwd=work
    )
    if child.returncode != 0 and not child.timed_out:
        raise RuntimeError(f"getmail exited {child.returncode}:\n{child.stderr[-2000:]}")
    fetched = sum(len(os.listdir(maildir / sub)) for sub in ("cur", "new"))
    shutil.rmtree(maildir, ignore_errors=True)
    return {
        "wall": child.wall,
        "rss_mb": child.max_rss_mb,
        "fetched": fetched,
        "timed_out": child.timed_out,
    }
