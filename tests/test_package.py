"""The package's shape: its public API imports, its import graph has no cycle and
no private name crosses modules, and the dev harness stays out of it."""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import inbound_mail

ROOT = Path(__file__).resolve().parent.parent


def test_every_name_of_all_imports() -> None:
    for name in inbound_mail.__all__:
        assert getattr(importlib.import_module("inbound_mail"), name) is not None, name


def test_no_import_cycle_and_no_private_name_across_modules() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_imports.py")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_package_never_imports_the_dev_harness() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "inbound_mail").rglob("*.py")
        if any(
            line.lstrip().startswith(("import testsupport", "from testsupport"))
            for line in path.read_text(encoding="utf-8").splitlines()
        )
    ]
    assert offenders == []


def test_the_wheel_holds_only_the_package() -> None:
    import tomllib

    build = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert build["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == ["inbound_mail"]


def test_the_lint_type_checks_the_tests_and_benchmarks_too() -> None:
    """A test calling a helper whose signature another change altered fails ``make lint``
    (what ``.ci/run`` runs), not only the test run."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    (mypy,) = [line.split() for line in lint.splitlines() if "/mypy" in line]
    assert {"inbound_mail", "testsupport", "tests", "benchmarks"} <= set(mypy[1:])


def test_a_misspelt_account_state_is_a_type_error(tmp_path: Path) -> None:
    """Readiness and stall detection compare typed states: a typo fails mypy."""
    snippet = tmp_path / "typo.py"
    snippet.write_text(
        "from inbound_mail.sources.imap.worker import AccountHealth\n"
        "def resting(health: AccountHealth) -> bool:\n"
        '    return health.state == "backof"\n',
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(snippet)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 1 and "Non-overlapping equality check" in result.stdout, (
        result.stdout
    )


def test_no_module_re_exports_a_name_it_imports() -> None:
    """A name is imported from the module that defines it: ``__all__`` lists only
    names a module defines (package ``__init__`` files, the public API, excepted)."""
    offenders = {}
    for path in sorted((ROOT / "inbound_mail").rglob("*.py")):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {
            alias.asname or alias.name
            for node in tree.body
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
        }
        listed = {
            element.value
            for node in tree.body
            if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
            and isinstance(node.value, ast.List | ast.Tuple)
            for element in node.value.elts
            if isinstance(element, ast.Constant) and isinstance(element.value, str)
        }
        name = str(path.relative_to(ROOT))
        if again := listed & imported:
            offenders[name] = sorted(again)
    assert offenders == {}


# -- start-up: what each entry point loads (issue 15: at 10k emails fixed costs decide) ---------
# Asserted on module sets, never on durations (those are the benchmarks' job).
_DAEMON_ONLY = {"apscheduler", "prometheus_client", "redis", "nats", "httpx", "authlib"}
_TRUST_CHECK = {"dkim", "dns", "authres"}


def _loaded_after(code: str, cwd: Path) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    snippet = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    result = subprocess.run(
        [sys.executable, "-c", snippet],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if k != "INBOUND_MAIL_CONFIG"},
    )
    assert result.returncode == 0, result.stderr
    modules: list[str] = json.loads(result.stdout.splitlines()[-1])
    return set(modules)


def _among(modules: set[str], names: set[str]) -> list[str]:
    """Which of ``names`` (modules or packages, with their submodules) are in ``modules``."""
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def test_a_parse_worker_loads_only_the_parser(tmp_path: Path) -> None:
    """The pool's forkserver preloads this module and forks every worker from it."""
    modules = _loaded_after("import inbound_mail.sources.parse_worker", tmp_path)
    assert "mailparser" in modules
    unwanted = _DAEMON_ONLY | _TRUST_CHECK | {"sqlite_utils", "sqlite3", "click", "regex"}
    unwanted |= {"imapclient", "importlib.metadata"}
    unwanted |= {f"inbound_mail.{m}" for m in ("store", "sinks", "delivery", "cli", "service")}
    unwanted |= {f"inbound_mail.{m}" for m in ("config.reader", "parse.authenticity", "oauth")}
    unwanted |= {f"inbound_mail.sources.{m}" for m in ("pool", "importer", "inflight", "imap")}
    assert _among(modules, unwanted) == []


def test_a_submodule_does_not_load_the_public_api(tmp_path: Path) -> None:
    modules = _loaded_after("import inbound_mail.errors", tmp_path)
    assert (
        _among(modules, {"inbound_mail.config", "inbound_mail.sinks", "inbound_mail.models"}) == []
    )


def test_the_public_api_loads_on_first_use(tmp_path: Path) -> None:
    modules = _loaded_after(
        "import inbound_mail\nassert inbound_mail.Sink.__module__ == 'inbound_mail.sinks'\n"
        "assert set(inbound_mail.__all__) <= set(dir(inbound_mail))",
        tmp_path,
    )
    assert "inbound_mail.sinks" in modules
    assert "inbound_mail.config.reader" not in modules  # nobody asked for load_config


def test_the_cli_help_loads_no_machinery(tmp_path: Path) -> None:
    modules = _loaded_after(
        "from inbound_mail.cli import cli\ntry:\n    cli(['--help'])\nexcept SystemExit:\n    pass",
        tmp_path,
    )
    unwanted = _DAEMON_ONLY | _TRUST_CHECK | {"sqlite_utils", "sqlite3", "mailparser", "regex"}
    unwanted |= {"imapclient", "importlib.metadata"}
    unwanted |= {f"inbound_mail.{m}" for m in ("config", "store", "sinks", "delivery", "parse")}
    unwanted |= {f"inbound_mail.{m}" for m in ("service", "check", "oauth", "sources.importer")}
    assert _among(modules, unwanted) == []


def test_import_loads_no_daemon_no_trust_check_and_no_outbox_it_does_not_use(
    tmp_path: Path,
) -> None:
    """Nothing authenticates (``authenticate = "off"``) and nothing is delivered."""
    from inbound_mail.testing.emails import build_provider_email

    for n in range(3):
        raw = build_provider_email(f"+3934700000{n}", "+393400000000", "20240501120000", f"hi {n}")
        (tmp_path / f"{n}.eml").write_bytes(raw)
    (tmp_path / "config.toml").write_text('[parse]\nauthenticate = "off"\n', encoding="utf-8")
    argv = ["--config", "config.toml", "--db", "x.db", "import", "--no-deliver", "--workers", "1"]
    argv.append(".")
    modules = _loaded_after(
        f"from inbound_mail.cli import cli\ncli({argv!r}, standalone_mode=False)", tmp_path
    )
    assert "inbound_mail.sources.importer" in modules and "mailparser" in modules
    unwanted = _DAEMON_ONLY | _TRUST_CHECK | {"sqlite_utils", "regex", "imapclient"}
    unwanted |= {f"inbound_mail.{m}" for m in ("service", "check", "oauth", "sources.imap")}
    unwanted |= {"inbound_mail.delivery", "inbound_mail.sinks"}
    assert _among(modules, unwanted) == []


def test_backfill_loads_no_daemon_and_no_trust_check_up_front(tmp_path: Path) -> None:
    """dkimpy and dnspython load when a verifier first checks a signature; httpx when an
    account first fetches an OAuth2 token."""
    modules = _loaded_after("import inbound_mail.sources.imap.backfill", tmp_path)
    assert "imapclient" in modules
    unwanted = _DAEMON_ONLY | _TRUST_CHECK | {"sqlite_utils", "regex", "http.server"}
    unwanted |= {"inbound_mail.service", "inbound_mail.check"}
    assert _among(modules, unwanted) == []


def test_nothing_installs_cyrus_imapd_through_the_package_manager() -> None:
    """Debian's cyrus-imapd and dovecot-imapd conflict: installing one removes the
    other.  The scripts may download cyrus-imapd's .deb to unpack it, never install it."""
    install = re.compile(r"\b(apt-get|apt|dpkg)\s+(-\S+\s+)*(install|-i)\b.*cyrus-imapd")
    offenders = []
    for path in [ROOT / "dev", ROOT / "Makefile", *(ROOT / "scripts").rglob("*"),
                 *(ROOT / ".ci").rglob("*")]:  # fmt: skip
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if install.search(code) or re.search(r"missing\+=\([^)]*cyrus-imapd", code):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []
