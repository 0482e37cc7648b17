"""Local mail exports: mbox, Maildir, single messages and folders of them."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from inbound_mail.errors import SourceError
from inbound_mail.models import EmailOrigin
from inbound_mail.sources import local
from inbound_mail.sources.local import count_emails, iter_emails


def email(n: int, body: bytes = b"", nl: bytes = b"\n") -> bytes:
    lines = [
        b"From: smsin@agiletelecom.com",
        b"To: customer@example.com",
        b"Subject: Agile Telecom -- SMS received",
        b"Message-ID: <%d@agiletelecom.com>" % n,
        b"",
        b"From: +393301234567",
        b"To: +393331234333",
        b"Date/Time: 20150525154559",
        b"Body: message %d" % n,
    ]
    return nl.join(lines) + nl + body


def read(
    *paths: Path, skipped: list[tuple[Path, str]] | None = None
) -> list[tuple[bytes, EmailOrigin]]:
    sink = skipped if skipped is not None else []
    return list(iter_emails(paths, on_skip=lambda path, reason: sink.append((path, reason))))


def test_mbox_is_split_on_from_lines_after_blank_lines(tmp_path: Path) -> None:
    quoted = b">From the mboxrd quoting\n>>From stays quoted once\n"
    unquoted = b"From the mboxrd quoting\n>From stays quoted once\n"
    not_a_separator = b"From a line that follows no blank line\n\n\n"
    mbox = tmp_path / "export"
    mbox.write_bytes(
        b"From sender@example.com Sat Jan  3 01:05:34 1996\n" + email(0) + b"\n"
        b"From sender@example.com Sat Jan  3 01:05:35 1996\n" + email(1, quoted + not_a_separator)
        + b"\n"
        b"From sender@example.com Sat Jan  3 01:05:36 1996\n" + email(2) + b"\n"
    )  # fmt: skip
    found = read(mbox)
    assert [raw for raw, _ in found] == [email(0), email(1, unquoted + not_a_separator), email(2)]
    assert [origin for _, origin in found] == [
        EmailOrigin("mbox", path=str(mbox), key=str(n)) for n in range(3)
    ]


def test_crlf_mbox_keeps_crlf_and_drops_the_separator(tmp_path: Path) -> None:
    mbox = tmp_path / "windows.mbox"
    messages = [email(n, b">From quoted\r\n" if n else b"", nl=b"\r\n") for n in range(2)]
    mbox.write_bytes(
        b"".join(b"From x Mon Jan 1 00:00:00 2024\r\n" + m + b"\r\n" for m in messages)
    )
    assert [raw for raw, _ in read(mbox)] == [
        email(0, nl=b"\r\n"),
        email(1, b"From quoted\r\n", nl=b"\r\n"),
    ]
    assert count_emails([mbox]) == 2


def test_mbox_without_trailing_blank_line(tmp_path: Path) -> None:
    mbox = tmp_path / "a.mbox"
    mbox.write_bytes(b"From x\n" + email(0) + b"\nFrom x\n" + email(1).rstrip(b"\n"))
    assert [raw for raw, _ in read(mbox)] == [email(0), email(1).rstrip(b"\n")]


def make_maildir(root: Path, messages: dict[str, bytes]) -> Path:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    for name, raw in messages.items():
        (root / name).write_bytes(raw)
    return root


def test_maildir_is_read_by_key_with_its_subfolders(tmp_path: Path) -> None:
    root = make_maildir(tmp_path / "Maildir", {
        "new/1700000002.M2P2.host": email(2),
        "cur/1700000001.M1P1.host:2,S": email(1),
        "tmp/1700000003.M3P3.host": email(3),  # still being delivered: not a message yet
        "cur/.hidden": email(4),
        "dovecot-uidlist": b"3 V1 N4\n",
    })  # fmt: skip
    make_maildir(root / ".Archive", {"cur/1600000000.M9P9.host:2,": email(9)})
    make_maildir(root / "NotMaildirPlusPlus", {"cur/1.M.host": email(8)})
    found = read(root)
    assert [raw for raw, _ in found] == [email(1), email(2), email(9)]
    assert [origin for _, origin in found] == [
        EmailOrigin("maildir", path=str(root), key="1700000001.M1P1.host"),
        EmailOrigin("maildir", path=str(root), key="1700000002.M2P2.host"),
        EmailOrigin("maildir", path=str(root / ".Archive"), key="1600000000.M9P9.host"),
    ]
    assert count_emails([root]) == 3


def test_folder_of_eml_skips_files_that_are_not_mail(tmp_path: Path) -> None:
    fixtures = tmp_path / "fixtures"
    fixtures.mkdir()
    (fixtures / "a.eml").write_bytes(email(1))
    (fixtures / "a.json").write_bytes(b'{"from": "+393301234567", "to": "+393331234333"}\n')
    (fixtures / "b.eml").write_bytes(email(2, nl=b"\r\n"))
    (fixtures / "b.json").write_bytes(b'{\n  "originator": "+39"\n}\n')
    (fixtures / "README.md").write_bytes(
        b"Fixtures: golden pairs\n\nEach NAME.eml has a NAME.json.\n"
    )
    (fixtures / "empty.eml").write_bytes(b"")
    (fixtures / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    skipped: list[tuple[Path, str]] = []
    found = read(fixtures, skipped=skipped)
    assert found == [
        (email(1), EmailOrigin("eml", path=str(fixtures / "a.eml"))),
        (email(2, nl=b"\r\n"), EmailOrigin("eml", path=str(fixtures / "b.eml"))),
    ]
    assert skipped == [
        (fixtures / "README.md", "not an email"),
        (fixtures / "a.json", "not an email"),
        (fixtures / "b.json", "not an email"),
        (fixtures / "empty.eml", "empty file"),
    ]
    assert count_emails([fixtures]) == 2


def test_kind_is_decided_by_content_not_name(tmp_path: Path) -> None:
    (tmp_path / "really-an-mbox.eml").write_bytes(b"From x\n" + email(1) + b"\nFrom x\n" + email(2))
    (tmp_path / "message.txt").write_bytes(b"Received: from mx by mx\n\tid 1\n" + email(3))
    (tmp_path / "notes.mbox").write_bytes(b"Subject line without a colon\n")
    kinds = [(origin.kind, Path(origin.path or "").name) for _, origin in read(tmp_path)]
    assert kinds == [
        ("eml", "message.txt"),
        ("mbox", "really-an-mbox.eml"),
        ("mbox", "really-an-mbox.eml"),
    ]


def test_nested_directories_are_walked_in_sorted_order(tmp_path: Path) -> None:
    (tmp_path / "b" / "deeper").mkdir(parents=True)
    (tmp_path / "b" / "deeper" / "x.eml").write_bytes(email(3))
    (tmp_path / "b" / "a.eml").write_bytes(email(2))
    (tmp_path / "a.eml").write_bytes(email(1))
    (tmp_path / "c.mbox").write_bytes(b"From x\n" + email(4))
    make_maildir(tmp_path / "d", {"new/1.M.host": email(5)})
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD.eml").write_bytes(email(6))
    (tmp_path / "link").symlink_to(tmp_path / "b", target_is_directory=True)

    first = read(tmp_path)
    assert [raw for raw, _ in first] == [email(n) for n in (1, 2, 3, 4, 5)]
    assert read(tmp_path) == first
    # Explicit paths are read in the order given.
    assert [raw for raw, _ in read(tmp_path / "c.mbox", tmp_path / "a.eml")] == [email(4), email(1)]
    assert count_emails([tmp_path]) == 5


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.eml").write_bytes(email(1))
    monkeypatch.chdir(tmp_path)
    [(_, origin)] = read(Path("a.eml"))
    assert origin.path == str(tmp_path / "a.eml")


def test_unreadable_paths_raise_source_error(tmp_path: Path) -> None:
    (tmp_path / "a.eml").write_bytes(email(1))
    emails = iter_emails([tmp_path / "a.eml", tmp_path / "missing.mbox"])
    with pytest.raises(SourceError, match=r"missing\.mbox"):
        next(emails)  # before anything is read
    dangling = tmp_path / "dangling.eml"
    dangling.symlink_to(tmp_path / "gone.eml")
    with pytest.raises(SourceError, match=r"dangling\.eml"):
        read(dangling)
    assert count_emails([tmp_path / "missing.mbox"]) is None


def test_large_mbox_streams_with_flat_memory(tmp_path: Path) -> None:
    mbox = tmp_path / "big.mbox"
    with mbox.open("wb") as out:
        for n in range(20_000):
            out.write(b"From smsin@agiletelecom.com Mon Jan  1 00:00:00 2024\n")
            out.write(email(n, b">From padding " + b"x" * 400 + b"\n"))
            out.write(b"\n")
    size = mbox.stat().st_size
    assert size > 10_000_000
    assert count_emails([mbox]) == 20_000

    tracemalloc.start()
    try:
        seen = 0
        last = None
        for raw, origin in iter_emails([mbox]):
            seen += 1
            last = origin.key
            assert raw.endswith(b"From padding " + b"x" * 400 + b"\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (seen, last) == (20_000, "19999")
    assert peak < 2_000_000, f"peak {peak} bytes for a {size}-byte mbox"


def test_large_maildir_is_listed_in_little_memory(tmp_path: Path) -> None:
    """Listing a Maildir holds one short string per message, not a path object and an
    entry: ~110 bytes each here, against ~600 when every name became a Path."""
    root = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    raw = email(1)
    for n in range(5_000):
        (root / ("cur" if n % 2 else "new") / f"{1700000000 + n}.M{n}P1.host:2,S").write_bytes(raw)
    tracemalloc.start()
    try:
        keys = [origin.key for _, origin in iter_emails([root])]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert keys == [f"{1700000000 + n}.M{n}P1.host" for n in range(5_000)]
    # The keys kept by the test are counted too (~70 bytes each).
    assert peak < 5_000 * 250, f"peak {peak} bytes to read 5,000 messages"


def maildir_line(name: str) -> tuple[str, str, str]:
    """Where one sort of every message puts ``sub/name``: by key, then sub-folder, then name."""
    sub, base = name.split("/")
    return base.split(":", 1)[0], sub, base


@pytest.mark.parametrize("batch", [1, 2, 3, 7, 50_000])
def test_maildir_read_in_passes_keeps_the_order_of_one_sort(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """However small the batch a pass keeps, every message comes once, in the order of
    one sort of them all, and the sub-folders after."""
    monkeypatch.setattr(local, "_MAILDIR_BATCH", batch)
    monkeypatch.setattr(local, "_MAILDIR_PASSES", 10**9)  # the batch never grows
    names = [
        "new/1700000002.M2P2.host", "cur/1700000001.M1P1.host:2,S", "cur/17:2,",
        "new/1", "cur/1:2,S", "new/1:2,",  # one key in new/ and cur/, and twice in new/
        "new/a", "new/a.b", "cur/a-b:2,F", "new/A", "cur/\u00e9t\u00e9:2,S", "new/z\u00ff",
        *(f"cur/7:2,{flags}" for flags in ("", "D", "F", "FS", "R", "RS", "S", "ST", "T")),
        *(f"{'new' if n % 3 else 'cur'}/{1600000000 + n * 7919 % 101}.M{n}P9.host"
          + ("" if n % 3 else ":2,S") for n in range(40)),
    ]  # fmt: skip
    assert len(set(names)) == len(names)
    root = make_maildir(tmp_path / "Maildir", {name: email(n) for n, name in enumerate(names)})
    make_maildir(root / ".Archive", {"cur/0.M0P0.host:2,": email(1000), "new/00": email(1001)})
    make_maildir(root / ".Archive" / ".Old", {"new/0": email(1002)})
    found = read(root)
    ordered = sorted(names, key=maildir_line)
    assert [raw for raw, _ in found] == [
        *(email(names.index(name)) for name in ordered),
        email(1000), email(1001), email(1002),
    ]  # fmt: skip
    assert [origin.key for _, origin in found][: len(names)] == [
        maildir_line(name)[0] for name in ordered
    ]
    assert count_emails([root]) == len(names) + 3


def test_maildir_message_renamed_between_passes_is_read_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live Maildir: a reader marks messages seen (new/ -> cur/) or deleted (flags
    added) while the import runs: each is read once, from where it is when its pass
    lists it, never again under its new name."""
    monkeypatch.setattr(local, "_MAILDIR_BATCH", 2)
    monkeypatch.setattr(local, "_MAILDIR_PASSES", 10**9)  # the batch never grows
    root = make_maildir(tmp_path / "Maildir", {
        "new/k0": email(0), "new/k1": email(1), "cur/k2:2,S": email(2),
        "new/k3": email(3), "cur/k4:2,S": email(4), "new/k5": email(5),
    })  # fmt: skip
    skipped: list[tuple[Path, str]] = []
    emails = iter_emails([root], on_skip=lambda path, reason: skipped.append((path, reason)))
    first = [next(emails), next(emails)]  # the first pass: k0, k1
    assert [origin.key for _, origin in first] == ["k0", "k1"]
    # Between passes: the two read are renamed, one to a name that sorts after its old one;
    # two not read yet move too.
    os.rename(root / "new" / "k1", root / "cur" / "k1:2,S")
    os.rename(root / "new" / "k0", root / "cur" / "k0:2,T")
    os.rename(root / "new" / "k3", root / "cur" / "k3:2,S")
    os.rename(root / "cur" / "k4:2,S", root / "cur" / "k4:2,ST")
    rest = list(emails)
    assert [origin.key for _, origin in first + rest] == [f"k{n}" for n in range(6)]
    assert [raw for raw, _ in first + rest] == [email(n) for n in range(6)]
    assert skipped == []


def test_maildir_message_gone_after_its_pass_listed_it_is_skipped(tmp_path: Path) -> None:
    root = make_maildir(tmp_path / "Maildir", {f"new/k{n}": email(n) for n in range(3)})
    skipped: list[tuple[Path, str]] = []
    emails = iter_emails([root], on_skip=lambda path, reason: skipped.append((path, reason)))
    assert next(emails)[0] == email(0)
    os.rename(root / "new" / "k1", root / "cur" / "k1:2,S")  # listed as new/k1: read nowhere
    assert [raw for raw, _ in emails] == [email(2)]
    assert skipped == [(root / "new" / "k1", "vanished while reading")]


def test_maildir_pass_ends_on_a_whole_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two files of one key (a copy left by a crashed reader) are read in the same pass,
    so renaming the first after its pass could not bring it back in the next."""
    monkeypatch.setattr(local, "_MAILDIR_BATCH", 2)
    monkeypatch.setattr(local, "_MAILDIR_PASSES", 10**9)  # the batch never grows
    root = make_maildir(tmp_path / "Maildir", {
        "cur/k0:2,S": email(0), "cur/k1:2,R": email(1), "cur/k1:2,S": email(2),
    })  # fmt: skip
    emails = iter_emails([root])
    first = [next(emails)[0], next(emails)[0]]  # a batch of 2 would end inside k1
    os.rename(root / "cur" / "k1:2,R", root / "cur" / "k1:2,T")
    assert first + [raw for raw, _ in emails] == [email(0), email(1), email(2)]


def test_maildir_folder_that_cannot_be_listed_is_reported_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "_MAILDIR_BATCH", 1)
    monkeypatch.setattr(local, "_MAILDIR_PASSES", 10**9)  # the batch never grows
    root = make_maildir(tmp_path / "Maildir", {f"cur/{n}:2,S": email(n) for n in range(4)})
    errors: list[tuple[Path, str]] = []
    emails = iter_emails([root], on_error=lambda path, reason: errors.append((path, reason)))
    assert next(emails)[1].key == "0"
    (root / "new").rmdir()  # every later pass fails to list it
    assert [origin.key for _, origin in emails] == ["1", "2", "3"]
    assert errors == [(root / "new", "cannot list the folder: No such file or directory")]


def test_maildir_listing_memory_does_not_grow_with_the_maildir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Passes keep one batch of names, not one per message: with a batch of 100 the
    peak is the same for 500 messages and for 5,000 (listed whole: ~550 KB)."""
    monkeypatch.setattr(local, "_MAILDIR_BATCH", 100)
    monkeypatch.setattr(local, "_MAILDIR_PASSES", 10**9)  # the batch never grows
    raw = email(1)
    peaks = []
    for size in (500, 5_000):
        root = tmp_path / f"Maildir{size}"
        for sub in ("cur", "new", "tmp"):
            (root / sub).mkdir(parents=True)
        for n in range(size):
            name = f"{1700000000 + n * 7919 % size}.M{n}P1.host"
            (root / ("cur" if n % 2 else "new") / f"{name}:2,S").write_bytes(raw)
        tracemalloc.start()
        try:
            seen = sum(1 for _ in iter_emails([root]))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert seen == size
        peaks.append(peak)
    assert peaks[1] < 100_000, peaks
    assert peaks[1] < peaks[0] + 20_000, peaks


def test_count_matches_iteration_at_block_boundaries(tmp_path: Path) -> None:
    # Separators straddling the 256 KiB read blocks must be counted once.
    mbox = tmp_path / "m.mbox"
    with mbox.open("wb") as out:
        for n in range(3000):
            out.write(b"From x\r\n" + email(n, b"y" * (n % 97) + b"\r\n", nl=b"\r\n") + b"\r\n")
    assert count_emails([mbox]) == len(read(mbox)) == 3000
    assert os.path.getsize(mbox) > 3 * 256 * 1024


def test_a_large_maildir_is_listed_in_a_bounded_number_of_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past _MAILDIR_BATCH * _MAILDIR_PASSES messages the batch grows: the first pass
    and at most _MAILDIR_PASSES more, whatever the Maildir holds; the order stays."""
    monkeypatch.setattr(local, "_MAILDIR_BATCH", 2)
    monkeypatch.setattr(local, "_MAILDIR_PASSES", 3)
    names = {f"{'cur' if n % 2 else 'new'}/{1700000000 + n * 7919 % 97}.M{n}P1.host": email(n)
             for n in range(60)}  # fmt: skip
    root = make_maildir(tmp_path / "Maildir", names)
    scans: list[str] = []
    scandir = os.scandir

    def counted(path: Any) -> Any:
        scans.append(str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", counted)
    found = [raw for raw, _ in iter_emails([root])]
    ordered = sorted(names, key=lambda name: maildir_line(name))
    assert found == [names[name] for name in ordered]
    assert scans.count(str(root / "new")) <= 1 + 3
