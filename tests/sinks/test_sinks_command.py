"""The command sink, running real programs (the test's own Python interpreter)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest

from inbound_mail.config.model import SinkConfig
from inbound_mail.delivery import AttemptContext, DeliveryWorker
from inbound_mail.errors import ConfigError, PermanentDeliveryError, TemporaryDeliveryError
from inbound_mail.models import EmailOrigin, SmsRecord
from inbound_mail.sinks import create_sink
from inbound_mail.sinks.command import ENV_VALUE_LIMIT, CommandSink
from inbound_mail.store.db import Store
from inbound_mail.store.rows import IngestItem
from inbound_mail.testing.wait import wait_until

CONTEXT = AttemptContext(delivery_id=1, attempt=1)
SMS = SmsRecord(
    originator="+393301234567",
    destination="+393331234333",
    date_time="20150525154559",
    received_at="2015-05-25T13:45:59Z",
    text="A1B2 hello; $(touch pwned) è",
    keyword="A1B2",
)
DUMP = """
import json, os, sys
out = {"stdin": sys.stdin.read(), "argv": sys.argv[1:],
       "env": {k: v for k, v in os.environ.items()}}
open(os.environ["DUMP_TO"], "w", encoding="utf-8").write(json.dumps(out))
"""


def python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


def test_exit_0_delivers_with_json_stdin_env_and_literal_argv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dump = tmp_path / "dump.json"
    monkeypatch.setenv("IMAP_PASSWORD", "do-not-leak")
    monkeypatch.chdir(tmp_path)
    sink = CommandSink("cmd", python(DUMP, "a; touch pwned", "$HOME"), env={"DUMP_TO": str(dump)})
    assert sink.deliver(SMS, CONTEXT) == "exit 0"
    seen = json.loads(dump.read_text(encoding="utf-8"))
    assert json.loads(seen["stdin"]) == SMS.to_dict()
    assert seen["argv"] == ["a; touch pwned", "$HOME"]  # no shell: nothing expanded
    assert not (tmp_path / "pwned").exists()
    env = seen["env"]
    assert {k: v for k, v in env.items() if k.startswith("INBOUND_SMS_")} == {
        "INBOUND_SMS_ID": SMS.id,
        "INBOUND_SMS_ORIGINATOR": SMS.originator,
        "INBOUND_SMS_DESTINATION": SMS.destination,
        "INBOUND_SMS_DATE_TIME": SMS.date_time,
        "INBOUND_SMS_TEXT": SMS.text,
        "INBOUND_SMS_RECEIVED_AT": SMS.received_at,
        "INBOUND_SMS_KEYWORD": "A1B2",
        "INBOUND_SMS_TRUNCATED": "0",
        "INBOUND_SMS_AUTHENTICATED": "",
        "INBOUND_SMS_AUTH_REASON": "",
    }
    assert "IMAP_PASSWORD" not in env  # the daemon's environment is not passed on
    assert env["PATH"] == os.environ["PATH"]


def test_shell_metacharacters_are_literal(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    sink = CommandSink("cmd", ["/bin/echo", f"x; touch {marker}"])
    assert sink.deliver(SMS, CONTEXT) == "exit 0"
    assert not marker.exists()


def test_missing_keyword_is_an_empty_variable(tmp_path: Path) -> None:
    dump = tmp_path / "dump.json"
    sms = SmsRecord("+39330", "+39333", "20150525154559", "2015-05-25T13:45:59Z", "hi")
    CommandSink("cmd", python(DUMP), env={"DUMP_TO": str(dump)}).deliver(sms, CONTEXT)
    assert json.loads(dump.read_text(encoding="utf-8"))["env"]["INBOUND_SMS_KEYWORD"] == ""


def test_exit_75_is_temporary_with_stderr() -> None:
    sink = CommandSink("cmd", python("import sys; sys.stderr.write('db busy'); sys.exit(75)"))
    with pytest.raises(TemporaryDeliveryError, match=r"exit 75 \(EX_TEMPFAIL\): db busy"):
        sink.deliver(SMS, CONTEXT)


def test_other_exit_is_permanent_with_the_stderr_tail() -> None:
    code = "import sys; sys.stderr.write('x' * 10000 + 'THE END'); sys.exit(1)"
    sink = CommandSink("cmd", python(code))
    with pytest.raises(PermanentDeliveryError) as caught:
        sink.deliver(SMS, CONTEXT)
    message = str(caught.value)
    assert message.startswith("exit 1: xxx") and message.endswith("THE END")
    assert len(message) < 2100


def test_death_by_signal_is_permanent() -> None:
    sink = CommandSink("cmd", python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    with pytest.raises(PermanentDeliveryError, match="killed by SIGKILL"):
        sink.deliver(SMS, CONTEXT)


def test_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    code = f"""
import signal, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
open({str(pid_file)!r}, "w").write(str(child.pid))
sys.stderr.write("started"); sys.stderr.flush()
signal.pause()
"""
    sink = CommandSink("cmd", python(code), timeout=1.0)
    # The error says the timeout fired (the program and its child wait for a signal forever).
    with pytest.raises(TemporaryDeliveryError, match="timed out after 1s; process group killed"):
        sink.deliver(SMS, CONTEXT)
    child = int(pid_file.read_text())
    wait_until(lambda: not _alive(child), 5, message="the grandchild was killed too")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie waiting for its (killed) parent's reaper counts as gone.
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(") ")[1].startswith("Z"))


def test_a_program_that_cannot_start_is_permanent(tmp_path: Path) -> None:
    not_executable = tmp_path / "plain.txt"
    not_executable.write_text("not a program", encoding="utf-8")
    for argv, reason in (
        ([str(tmp_path / "not-there")], "No such file"),
        ([str(not_executable)], "Permission denied"),
        (["/bin/true", "x" * 200 * 1024], "Argument list too long"),  # E2BIG
    ):
        with pytest.raises(PermanentDeliveryError, match=f"cannot run .*{reason}"):
            CommandSink("cmd", argv).deliver(SMS, CONTEXT)


def test_a_200_kib_text_is_cut_in_the_environment_whole_on_stdin_and_blocks_nothing(
    tmp_path: Path,
) -> None:
    """Linux refuses an environment string over 128 KiB: uncapped, every attempt
    failed (E2BIG) and, with parallel = 1, every later SMS waited behind it."""
    db = tmp_path / "inbound.db"
    out = tmp_path / "out"
    out.mkdir()
    save = """
import json, os, sys
record = json.loads(sys.stdin.read())
env = {k: v for k, v in os.environ.items() if k.startswith("INBOUND_SMS_")}
name = os.path.join(sys.argv[1], os.environ["INBOUND_SMS_ID"])
open(name, "w", encoding="utf-8").write(json.dumps({"record": record, "env": env}))
"""
    long = SmsRecord("+39330", "+39333", "20150525154559", "2015-05-25T13:45:59Z", "è" * 100_000)
    short = SmsRecord("+39330", "+39333", "20150525154600", "2015-05-25T13:46:00Z", "next")
    items = [
        IngestItem(raw=b"raw", outcome=r, origin=EmailOrigin(kind="eml", path="x", key=r.id))
        for r in (long, short)
    ]
    with Store.open(db) as store:
        store.ingest(items, route=lambda r: ["cmd"])
    config = SinkConfig(name="cmd", type="command", options={"argv": python(save, str(out))})
    worker = DeliveryWorker(db, config)
    try:
        worker.run_once()
    finally:
        worker.close()
    with Store.open(db) as store:
        assert {r["status"] for r in store.deliveries(sink="cmd")} == {"delivered"}
    seen = json.loads((out / long.id).read_text(encoding="utf-8"))
    assert seen["record"]["text"] == long.text  # the whole record is on stdin
    text = seen["env"]["INBOUND_SMS_TEXT"]
    assert long.text.startswith(text) and 0 < len(text.encode("utf-8")) <= ENV_VALUE_LIMIT
    assert seen["env"]["INBOUND_SMS_TRUNCATED"] == "1"
    assert json.loads((out / short.id).read_text(encoding="utf-8"))["env"]["INBOUND_SMS_TEXT"] == (
        "next"
    )


def test_from_config_resolves_relative_program_against_the_config_file(tmp_path: Path) -> None:
    script = tmp_path / "hook.sh"
    script.write_text("#!/bin/sh\ncat >/dev/null\nexit 0\n", encoding="utf-8")
    script.chmod(0o755)
    config = SinkConfig(
        name="cmd",
        type="command",
        options={"argv": ["./hook.sh"], "timeout": "5s", "env": {"A": "b"}},
        file=str(tmp_path / "config.toml"),
    )
    sink = create_sink(config)
    assert isinstance(sink, CommandSink)
    assert sink.argv == [str(script)] and sink.timeout == 5.0 and sink.env == {"A": "b"}
    assert sink.deliver(SMS, CONTEXT) == "exit 0"


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({}, "argv"),
        ({"argv": []}, "argv"),
        ({"argv": "echo hi"}, "argv"),
        ({"argv": ["x"], "timeout": -1}, "timeout"),
        ({"argv": ["x"], "env": {"INBOUND_SMS_TEXT": "x"}}, "env"),
        ({"argv": ["x"], "shell": True}, "shell"),
    ],
)
def test_bad_options(options: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        create_sink(SinkConfig(name="cmd", type="command", options=options))
    assert caught.value.key == f"sinks[0].{key}"


def test_a_relative_program_never_becomes_a_path_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``./handler.sh`` with a config file given as ``config.toml`` (folder ".")
    became a bare ``handler.sh``, which the kernel's caller looked up on PATH."""
    evil_dir = tmp_path / "on-path"
    evil_dir.mkdir()
    marker = tmp_path / "evil-ran"
    for folder, body in ((tmp_path, "exit 0"), (evil_dir, f"touch {marker}; exit 0")):
        script = folder / "handler.sh"
        script.write_text(f"#!/bin/sh\ncat >/dev/null\n{body}\n", encoding="utf-8")
        script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{evil_dir}:{os.environ['PATH']}")
    config = SinkConfig(
        name="cmd", type="command", options={"argv": ["./handler.sh"]}, file="config.toml"
    )
    sink = create_sink(config)
    assert isinstance(sink, CommandSink)
    assert sink.argv[0] == str(tmp_path / "handler.sh")
    assert sink.deliver(SMS, CONTEXT) == "exit 0"
    assert not marker.exists()


def test_the_authenticity_verdict_is_in_the_environment(tmp_path: Path) -> None:
    dump = tmp_path / "dump.json"
    sms = dataclasses.replace(SMS, authenticated=False, auth_reason="no valid DKIM signature")
    CommandSink("cmd", python(DUMP), env={"DUMP_TO": str(dump)}).deliver(sms, CONTEXT)
    env = json.loads(dump.read_text(encoding="utf-8"))["env"]
    assert env["INBOUND_SMS_AUTHENTICATED"] == "false"
    assert env["INBOUND_SMS_AUTH_REASON"] == "no valid DKIM signature"
