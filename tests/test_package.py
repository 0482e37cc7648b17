"""The package's shape: its public API imports, its import graph has no cycle and
no private name crosses modules, and the dev harness stays out of it."""

from __future__ import annotations

import ast
import importlib
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
