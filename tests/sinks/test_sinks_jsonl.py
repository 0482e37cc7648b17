"""The jsonl sink: real files in tmp_path, and a real Store for the worker's batches."""

from __future__ import annotations

import errno
import itertools
import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from inbound_mail.config.model import SinkConfig
from inbound_mail.delivery import AttemptContext, DeliveryWorker
from inbound_mail.errors import ConfigError, TemporaryDeliveryError
from inbound_mail.models import EmailOrigin
from inbound_mail.sinks import create_sink
from inbound_mail.sinks.jsonl import JsonlSink
from inbound_mail.store.db import Store
from inbound_mail.store.rows import IngestItem
from inbound_mail.testing.wait import wait_until

from helpers import record

CONTEXT = AttemptContext(delivery_id=1, attempt=1)
_keys = itertools.count()


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every os.fsync call, as the (device, inode) it synced; the real fsync still runs."""
    calls: list[tuple[int, int]] = []
    real: Callable[[int], None] = os.fsync

    def spy(fd: int) -> None:
        st = os.fstat(fd)
        calls.append((st.st_dev, st.st_ino))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return calls


def identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def test_lines_are_appended_as_json(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text('{"earlier": true}\n', encoding="utf-8")
    sink = JsonlSink("file", path)
    records = [record(1, text="è già 😀"), record(2, text="two\nlines")]
    for r in records:
        assert sink.deliver(r, CONTEXT) is None
    sink.flush()
    sink.close()
    assert lines(path) == [{"earlier": True}, *(r.to_dict() for r in records)]
    assert "è già 😀" in path.read_text(encoding="utf-8")  # ensure_ascii=False


def test_new_file_is_private_and_existing_mode_is_kept(tmp_path: Path) -> None:
    new = tmp_path / "new.jsonl"
    sink = JsonlSink("file", new)
    sink.deliver(record(), CONTEXT)
    sink.close()
    assert stat.S_IMODE(new.stat().st_mode) == 0o600
    shared = tmp_path / "shared.jsonl"
    shared.touch()
    shared.chmod(0o640)
    sink = JsonlSink("file", shared)
    sink.deliver(record(), CONTEXT)
    sink.close()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o640


def test_flush_fsyncs_the_file_and_a_new_files_directory(
    tmp_path: Path, fsyncs: list[tuple[int, int]]
) -> None:
    path = tmp_path / "out.jsonl"
    sink = JsonlSink("file", path)
    sink.deliver(record(1), CONTEXT)
    sink.deliver(record(2), CONTEXT)
    assert fsyncs == []  # durable only on flush, once per batch
    sink.flush()
    assert fsyncs == [identity(path), identity(tmp_path)]
    sink.flush()  # nothing new: nothing to sync
    sink.deliver(record(3), CONTEXT)
    sink.flush()
    assert fsyncs[2:] == [identity(path)]
    sink.close()


def test_fsync_failure_is_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = JsonlSink("file", tmp_path / "out.jsonl")
    sink.deliver(record(), CONTEXT)

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(TemporaryDeliveryError, match=r"cannot fsync .*Input/output error"):
        sink.flush()


def test_unwritable_path_is_temporary(tmp_path: Path) -> None:
    sink = JsonlSink("file", tmp_path / "missing-dir" / "out.jsonl")
    with pytest.raises(TemporaryDeliveryError, match="cannot open"):
        sink.deliver(record(), CONTEXT)


def test_reopen_after_rename_writes_to_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    rotated = tmp_path / "out.jsonl.1"
    sink = JsonlSink("file", path)
    sink.deliver(record(1), CONTEXT)
    sink.flush()
    path.rename(rotated)  # what logrotate does
    sink.deliver(record(2), CONTEXT)  # still the old descriptor: goes to the renamed file
    sink.reopen()
    sink.deliver(record(3), CONTEXT)
    sink.close()
    assert [line["text"] for line in lines(rotated)] == ["message 1", "message 2"]
    assert [line["text"] for line in lines(path)] == ["message 3"]


def test_reopen_never_raises_and_a_failed_sync_fails_the_next_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = JsonlSink("file", tmp_path / "out.jsonl")
    sink.deliver(record(1), CONTEXT)
    real = os.fsync

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    sink.reopen()  # runs in a signal handler: must not raise
    monkeypatch.setattr(os, "fsync", real)
    with pytest.raises(TemporaryDeliveryError, match="cannot fsync"):
        sink.flush()  # the batch that wrote record 1 must not be marked delivered
    sink.deliver(record(2), CONTEXT)
    sink.flush()
    sink.close()
    assert len(lines(tmp_path / "out.jsonl")) == 2


def test_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    sink = create_sink(SinkConfig(name="out", type="jsonl", options={"path": "-"}))
    sink.deliver(record(7), CONTEXT)
    sink.flush()
    sink.close()
    assert json.loads(capfd.readouterr().out) == record(7).to_dict()


def test_worker_flushes_once_per_batch(tmp_path: Path, fsyncs: list[tuple[int, int]]) -> None:
    db = tmp_path / "inbound.db"
    out = tmp_path / "out.jsonl"
    records = [record(i) for i in range(20)]
    items = [
        IngestItem(b"raw", r, EmailOrigin(kind="eml", path="x", key=str(next(_keys))))
        for r in records
    ]
    with Store.open(db) as store:
        store.ingest(items, route=lambda r: ["file"])
    config = SinkConfig(name="file", type="jsonl", options={"path": str(out)})
    worker = DeliveryWorker(db, config)
    assert worker.run_once().delivered == 20
    worker.close()
    assert [line["id"] for line in lines(out)] == [r.id for r in records]
    assert fsyncs.count(identity(out)) == 1


def test_a_dangling_symlink_is_a_temporary_failure_not_a_spin(tmp_path: Path) -> None:
    """Both opens failed (missing, yet existing) and the loop spun at 100 % CPU for ever."""
    db = tmp_path / "inbound.db"
    out = tmp_path / "out.jsonl"
    out.symlink_to(tmp_path / "gone" / "target.jsonl")
    item = IngestItem(b"raw", record(1), EmailOrigin(kind="eml", path="x", key=str(next(_keys))))
    with Store.open(db) as store:
        store.ingest([item], route=lambda r: ["file"])
    config = SinkConfig(name="file", type="jsonl", options={"path": str(out)})
    worker = DeliveryWorker(db, config)
    results: list[int] = []
    thread = threading.Thread(target=lambda: results.append(worker.run_once().failed))
    thread.daemon = True
    thread.start()
    wait_until(lambda: not thread.is_alive(), 60, message="run_once returned")
    worker.close()
    assert results == [1]
    with Store.open(db) as store:
        [row] = store.deliveries(sink="file")
    assert row["status"] == "failed" and "symbolic link to a missing file" in row["last_error"]


def test_relative_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    config = SinkConfig(
        name="f", type="jsonl", options={"path": "sms.jsonl"}, file=str(tmp_path / "c.toml")
    )
    sink = create_sink(config)
    assert isinstance(sink, JsonlSink)
    assert sink.path == str(tmp_path / "sms.jsonl")


@pytest.mark.parametrize(
    ("options", "key"), [({}, "path"), ({"path": 3}, "path"), ({"path": "x", "mode": 1}, "mode")]
)
def test_bad_options(options: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        create_sink(SinkConfig(name="f", type="jsonl", options=options))
    assert caught.value.key == f"sinks[0].{key}"
