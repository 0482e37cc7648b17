"""Fix the imports of code written for the layout before issue 12 (``house``).

After merging a branch that still says ``from .store import Store`` or
``inbound_mail.imap.sync``: run ``python scripts/relayout.py FILE...`` on the
files the merge touched.  Only imports that no longer resolve are rewritten (to
the module that now defines the name, relative where they were relative), and
``inbound_mail.x`` names in strings and docs that name a moved module.  Logger
names are kept as they were (``getLogger("inbound_mail.imap")``): check them.
"""

# ruff: noqa
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path.cwd()
T = "inbound_mail.testing."
MOVES = {  # old module -> new module
    "inbound_mail.config": "inbound_mail.config.model",
    "inbound_mail._config_reader": "inbound_mail.config.reader",
    "inbound_mail.imap": "inbound_mail.sources.imap",
    "inbound_mail.imap.acks": "inbound_mail.sources.imap.acks",
    "inbound_mail.imap.connection": "inbound_mail.sources.imap.connection",
    "inbound_mail.imap.namespace": "inbound_mail.sources.imap.namespace",
    "inbound_mail.imap.oauth": "inbound_mail.sources.imap.oauth",
    "inbound_mail.imap.sync": "inbound_mail.sources.imap.sync",
    "inbound_mail.imap.worker": "inbound_mail.sources.imap.worker",
    "inbound_mail.backfill": "inbound_mail.sources.imap.backfill",
    "inbound_mail.importer": "inbound_mail.sources.importer",
    "inbound_mail.inflight": "inbound_mail.sources.inflight",
    "inbound_mail.parse": "inbound_mail.parse.message",
    "inbound_mail._html": "inbound_mail.parse.html",
    "inbound_mail.charsets": "inbound_mail.parse.charsets",
    "inbound_mail.parse_limits": "inbound_mail.parse.limits",
    "inbound_mail.authenticity": "inbound_mail.parse.authenticity",
    "inbound_mail.store": "inbound_mail.store.db",
    "inbound_mail._schema": "inbound_mail.store.schema",
    "inbound_mail._store_rows": "inbound_mail.store.rows",
    "inbound_mail.lock": "inbound_mail.store.lock",
    "inbound_mail.service": "inbound_mail.service.daemon",
    "inbound_mail._generation": "inbound_mail.service.generation",
    "inbound_mail.notify": "inbound_mail.service.notify",
    "inbound_mail.systemd": "inbound_mail.service.systemd",
    "inbound_mail.metrics": "inbound_mail.service.metrics",
    "inbound_mail.status": "inbound_mail.service.status",
    "inbound_mail.check": "inbound_mail.check.accounts",
    "inbound_mail._check_sinks": "inbound_mail.check.sinks",
    "inbound_mail.demo": "testsupport.demo",
}
for n in [
    "dovecot",
    "cyrus",
    "proxy",
    "certs",
    "dns",
    "dkim",
    "oauth_server",
    "redis_server",
    "nats_server",
    "bombs",
    "mailbox",
]:
    MOVES[T + n] = "testsupport." + n
for n in ["_maildir", "_process", "_dovecot_conf"]:
    MOVES[T + n] = "testsupport." + n[1:]
# names that leave a split module for a sibling
SPLIT = {
    "inbound_mail.config": (
        "inbound_mail.config.reader",
        {
            "load_config",
            "default_config_path",
            "CONFIG_ENV",
            "CONFIG_CANDIDATES",
            "require_accounts",
        },
    ),
    "inbound_mail.check": (
        "inbound_mail.check.lines",
        {"CheckLine", "Level", "reason", "LineMaker"},
    ),
}
# the package's new top-level packages (old module names that become packages)
NEWPKG = {
    "inbound_mail.config",
    "inbound_mail.parse",
    "inbound_mail.store",
    "inbound_mail.service",
    "inbound_mail.check",
}


def mod_path(mod: str) -> Path:
    p = ROOT / Path(*mod.split("."))
    return (
        p / "__init__.py"
        if (p / "__init__.py").exists() or mod in ("inbound_mail.imap", "inbound_mail.sources.imap")
        else p.with_suffix(".py")
    )


def old_file(mod: str) -> Path:
    p = ROOT / Path(*mod.split("."))
    if mod in ("inbound_mail.imap",):
        return p / "__init__.py"
    return p.with_suffix(".py")


def new_file(mod: str) -> Path:
    p = ROOT / Path(*mod.split("."))
    if mod == "inbound_mail.sources.imap":
        return p / "__init__.py"
    return p.with_suffix(".py")


def is_pkg_file(path: Path) -> bool:
    return path.name == "__init__.py"


def module_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def resolve(rel: str, cur_mod: str, cur_is_pkg: bool) -> str:
    dots = len(rel) - len(rel.lstrip("."))
    rest = rel[dots:]
    base = cur_mod.split(".")
    if not cur_is_pkg:
        base = base[:-1]
    base = base[: len(base) - (dots - 1)] if dots > 1 else base
    return ".".join(base + ([rest] if rest else []))


def relative(target: str, cur_mod: str, cur_is_pkg: bool) -> str:
    pkg = cur_mod.split(".") if cur_is_pkg else cur_mod.split(".")[:-1]
    t = target.split(".")
    if not pkg or pkg[0] != t[0]:
        return target
    i = 0
    while i < len(pkg) and i < len(t) and pkg[i] == t[i]:
        i += 1
    return "." * (len(pkg) - i + 1) + ".".join(t[i:])


def map_mod(mod: str, names: list[str] | None = None) -> list[tuple[str, list[str] | None]]:
    """New module(s) for `mod` (with the names each gets, when split)."""
    if mod in SPLIT and names is not None:
        other, moved = SPLIT[mod]
        a = [n for n in names if n.split(" as ")[0].strip() not in moved]
        b = [n for n in names if n.split(" as ")[0].strip() in moved]
        out = []
        if a:
            out.append((MOVES[mod], a))
        if b:
            out.append((other, b))
        return out
    return [(MOVES.get(mod, mod), names)]


FROM_RE = re.compile(
    r"^(?P<ind>[ \t]*)from[ \t]+(?P<mod>\.*[\w.]*)[ \t]+import[ \t]+(?P<names>\([^)]*\)|[^\n]*)",
    re.M,
)
IMPORT_RE = re.compile(
    r"^(?P<ind>[ \t]*)import[ \t]+(?P<mod>inbound_mail[\w.]*)(?P<rest>[ \t]+as[ \t]+\w+)?", re.M
)
TOKEN_RE = re.compile(r"\binbound_mail(?:\.[A-Za-z_]\w*)+")


def split_names(s: str) -> tuple[list[str], str]:
    comment = ""
    if s.startswith("("):
        body = s[1:-1]
    else:
        body, _, c = s.partition("#")
        comment = ("  #" + c) if c else ""
    items = []
    for line in body.splitlines() or [body]:
        line = line.split("#")[0]
        items += [x.strip() for x in line.split(",") if x.strip()]
    return items, comment


def fmt(ind: str, mod: str, names: list[str], comment: str) -> str:
    one = f"{ind}from {mod} import {', '.join(names)}{comment}"
    if len(one) <= 100:
        return one
    inner = "".join(f"{ind}    {n},\n" for n in names)
    return f"{ind}from {mod} import (\n{inner}{ind})"


def token_map(tok: str) -> str:
    parts = tok.split(".")
    for k in range(len(parts), 1, -1):
        mod = ".".join(parts[:k])
        if mod in MOVES:
            rest = parts[k:]
            if mod in SPLIT and rest and rest[0] in SPLIT[mod][1]:
                return ".".join([SPLIT[mod][0]] + rest)
            return ".".join([MOVES[mod]] + rest)
        # an attribute of a module that does not move
    return tok


def rewrite(text: str, old_mod: str, old_is_pkg: bool, new_mod: str, new_is_pkg: bool) -> str:
    in_pkg = new_mod.split(".")[0]

    def from_sub(m: re.Match[str]) -> str:
        ind, mod, names_s = m["ind"], m["mod"], m["names"]
        if mod.startswith("."):
            absmod = resolve(mod, old_mod, old_is_pkg)
        elif mod.startswith("inbound_mail"):
            absmod = mod
        else:
            return m.group(0)
        names, comment = split_names(names_s)
        outs = []
        # `from pkg import module`
        if len(names) == 1 and f"{absmod}.{names[0].split(' as ')[0].strip()}" in MOVES:
            n = names[0]
            nm, _, alias = n.partition(" as ")
            target = MOVES[f"{absmod}.{nm.strip()}"]
            parent, leaf = target.rsplit(".", 1)
            alias = alias.strip() or nm.strip()
            pm = (
                relative(parent, new_mod, new_is_pkg)
                if mod.startswith(".") and parent.split(".")[0] == in_pkg
                else parent
            )
            return f"{ind}from {pm} import {leaf}" + (f" as {alias}" if alias != leaf else "")
        for target, nms in map_mod(absmod, names):
            if mod.startswith(".") and target.split(".")[0] == in_pkg:
                tm = relative(target, new_mod, new_is_pkg)
            else:
                tm = target
            outs.append(fmt(ind, tm, nms or names, comment))
        return "\n".join(outs)

    P = "\x00IM\x00"
    text = FROM_RE.sub(lambda m: from_sub(m).replace("inbound_mail", P), text)
    text = IMPORT_RE.sub(
        lambda m: f"{m['ind']}import {MOVES.get(m['mod'], m['mod'])}{m['rest'] or ''}".replace(
            "inbound_mail", P
        ),
        text,
    )
    text = TOKEN_RE.sub(lambda m: token_map(m.group(0)), text)
    return text.replace(P, "inbound_mail")


MOVES["inbound_mail.pool"] = "inbound_mail.sources.pool"


def exists(mod: str) -> bool:
    p = ROOT / Path(*mod.split("."))
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


NEW2OLD = {v: k for k, v in MOVES.items()}


def old_location(new_mod: str) -> str:
    """Where a module new to the merge would have sat before: imap/ for sources/imap/,
    inbound_mail.testing for testsupport, the top of the package for the role folders."""
    parts = new_mod.split(".")
    if new_mod.startswith("inbound_mail.sources.imap."):
        return "inbound_mail.imap." + parts[-1]
    if parts[0] == "testsupport" and len(parts) == 2:
        return "inbound_mail.testing." + parts[1]
    if len(parts) == 3 and parts[1] in ("config", "sources", "parse", "store", "service", "check"):
        return "inbound_mail." + parts[2]
    return new_mod


def fix(path: Path) -> None:
    new_mod = module_of(path)
    is_pkg = path.name == "__init__.py"
    old_mod = NEW2OLD.get(new_mod) or old_location(new_mod)
    text = path.read_text()

    def sub(m: re.Match[str]) -> str:
        mod = m["mod"]
        if not mod.startswith(".") and not mod.startswith("inbound_mail"):
            return m.group(0)
        names, comment = split_names(m["names"])
        target = resolve(mod, new_mod, is_pkg) if mod.startswith(".") else mod
        submodules = all(exists(f"{target}.{n.split(' as ')[0].strip()}") for n in names)
        if submodules or (exists(target) and target not in NEWPKG):
            return m.group(0)
        absmod = resolve(mod, old_mod, is_pkg) if mod.startswith(".") else mod
        outs = []
        for tgt, nms in map_mod(absmod, names):
            tm = relative(tgt, new_mod, is_pkg) if mod.startswith(".") else tgt
            outs.append(fmt(m["ind"], tm, nms or names, comment))
        return "\n".join(outs)

    def tok(m: re.Match[str]) -> str:
        t = m.group(0)
        parts = t.split(".")
        for k in range(len(parts), 1, -1):
            mod = ".".join(parts[:k])
            if exists(mod):
                return t
            if mod in MOVES:
                return token_map(t)
        return t

    new = FROM_RE.sub(sub, text)
    new = IMPORT_RE.sub(
        lambda m: f"{m['ind']}import {MOVES.get(m['mod'], m['mod'])}{m['rest'] or ''}", new
    )
    if path.suffix == ".py":
        lines = new.split("\n")
        new = "\n".join(l if "getLogger(" in l else TOKEN_RE.sub(tok, l) for l in lines)
    else:
        new = TOKEN_RE.sub(tok, new)
    if new != text:
        path.write_text(new)
        print(f"rewrote {path}")


if __name__ == "__main__":
    for name in sys.argv[1:]:
        fix(Path(name).resolve())
