"""The systemd unit: rendered for this installation, hardened, and the one in contrib/.

``systemd-analyze`` (Debian package ``systemd``) judges the unit offline; no
running systemd is needed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from inbound_mail.cli import cli
from inbound_mail.service.systemd import render_unit

from helpers import REPO, write_config

CONTRIB = REPO / "contrib" / "systemd"
REQUIRED = (
    "Type=notify",
    "WatchdogSec=",
    "Restart=on-failure",
    "StateDirectory=inbound-mail",
    "StateDirectoryMode=0700",
    "UMask=0077",
    "LoadCredential=",
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ExecReload=/bin/kill -HUP $MAINPID",
    # Bounded resources; no core dump (the watchdog's SIGABRT would write the passwords).
    "MemoryHigh=",
    "MemoryMax=",
    "TasksMax=",
    "LimitCORE=0",
)


def systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing: apt-get install systemd"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)


def exposure(unit: Path) -> float:
    result = systemd_analyze("security", "--offline=true", str(unit))
    assert result.returncode == 0, result.stderr
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout
    return float(found.group(1))


def test_contrib_unit_is_the_rendered_default() -> None:
    text = (CONTRIB / "inbound-mail.service").read_text(encoding="utf-8")
    assert text == render_unit(exec_start=["/opt/inbound-mail/bin/inbound-mail"])
    for directive in REQUIRED:
        assert directive in text


def test_contrib_unit_scores_at_most_1_1(tmp_path: Path) -> None:
    unit = tmp_path / "inbound-mail.service"
    shutil.copy(CONTRIB / "inbound-mail.service", unit)
    assert exposure(unit) <= 1.1


def test_systemd_unit_command_fills_in_this_installation(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "config.toml",
        db=tmp_path / "sms.db",
        sinks=[
            {
                "name": "hook",
                "type": "webhook",
                "url": "https://example.com/h",
                "secret_credential": "hook-secret",
            }
        ],
        extra='[[accounts]]\nname = "main"\nhost = "imap.example.com"\n'
        'username = "u"\npassword_credential = "imap-pw"\n',
    )
    result = CliRunner().invoke(cli, ["--config", str(config), "systemd-unit"])
    assert result.exit_code == 0, result.output
    unit = result.stdout
    exec_start = re.search(r"^ExecStart=(.*)$", unit, re.MULTILINE)
    assert exec_start is not None
    program = Path(sys.executable).parent / "inbound-mail"
    assert exec_start.group(1) == f"{program.absolute()} --config {config.absolute()} run"
    assert "LoadCredential=hook-secret:/etc/inbound-mail/hook-secret" in unit
    assert "LoadCredential=imap-pw:/etc/inbound-mail/imap-pw" in unit
    for directive in REQUIRED:
        assert directive in unit
    # tmp_path lives under /tmp, which PrivateTmp= hides: the command says so.
    assert "warning: the config" in result.stderr and "PrivateTmp" in result.stderr
    rendered = tmp_path / "inbound-mail.service"
    rendered.write_text(unit, encoding="utf-8")
    assert exposure(rendered) <= 1.1
    verify = systemd_analyze("verify", str(rendered))
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr


@pytest.mark.parametrize(
    ("argument", "word"),
    [
        ("/opt/my venv/bin/inbound-mail", '"/opt/my venv/bin/inbound-mail"'),
        ("/opt/100%/bin/x", "/opt/100%%/bin/x"),
        ("/opt/$HOME/x", "/opt/$$HOME/x"),
    ],
)
def test_exec_start_words_are_escaped(argument: str, word: str) -> None:
    unit = render_unit(exec_start=[argument])
    assert f"ExecStart={word} --config /etc/inbound-mail/config.toml run\n" in unit


def test_a_config_without_credentials_gets_no_load_credential(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.toml", db=tmp_path / "sms.db")
    result = CliRunner().invoke(cli, ["--config", str(config), "systemd-unit"])
    assert result.exit_code == 0
    assert "\nLoadCredential=" not in result.stdout, (
        "a credential whose file is missing fails the start"
    )
    assert "# LoadCredential=NAME:/etc/inbound-mail/NAME" in result.stdout
    assert "takes no secret from a systemd credential" in result.stderr
