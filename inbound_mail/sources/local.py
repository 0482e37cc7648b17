"""Streaming readers for local mail exports: mbox files, Maildirs, single messages.

The kind of a path is decided by content, never by extension:

- a directory holding ``cur/`` and ``new/`` is a Maildir (its Maildir++
  sub-folders, ``.Name/``, are read after it);
- any other directory is walked recursively in sorted name order, skipping
  hidden entries and not following directory symlinks;
- a file whose first line starts with ``From `` is an mbox;
- a file that starts with an RFC 5322 header block naming at least one
  usual header (``From``, ``Subject``, ``Received``, ...) is one message;
- anything else (a ``.json`` or ``README.md`` beside ``.eml`` files) is not
  mail: it yields nothing and is reported through ``on_skip``.

An mbox is split line by line on ``From `` lines that open the file or follow
a blank line, one message in memory at a time, so a 100k-message export reads
with flat memory.  ``>From `` lines are unquoted the mboxrd way (one ``>``
removed from ``>+From ``), which also undoes mboxo quoting; the blank line
that separates messages is not part of them.  CRLF files keep their CRLFs.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Literal

from ..errors import SourceError
from ..models import EmailOrigin

__all__ = ["SkipCallback", "count_emails", "iter_emails"]

_log = logging.getLogger(__name__)

#: Called with a path that holds no mail and the reason, e.g. ``"not an email"``.
SkipCallback = Callable[[Path, str], None]

_HEAD = 64 * 1024  # enough for any real header block
_BUFFER = 256 * 1024
_BLANK = (b"\n", b"\r\n")
_QUOTED_FROM = re.compile(rb">+From ")
# RFC 5322 field name (printable ASCII but colon), obsolete WSP before the colon allowed.
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_USUAL_FIELDS = frozenset(
    b"from to cc subject date message-id received return-path mime-version "
    b"delivered-to content-type reply-to sender x-original-to".split()
)
_Unit = tuple[Literal["maildir", "file"], Path]


def iter_emails(
    paths: Iterable[str | Path], *, on_skip: SkipCallback | None = None
) -> Iterator[tuple[bytes, EmailOrigin]]:
    """Every email under ``paths`` with its origin, in a deterministic order.

    Origins carry the absolute path; ``key`` is the message's 0-based index for
    an mbox, the unique name (without ``:2,flags``) for a Maildir, None for a
    single message.  Raises :class:`SourceError` naming a path that cannot be
    read.  Files that are not mail go to ``on_skip`` (default: logged).
    """
    skip = on_skip or _log_skip
    for kind, path in _units(paths):
        if kind == "maildir":
            yield from _read_maildir(path, skip)
        else:
            yield from _read_file(path, skip)


def count_emails(paths: Iterable[str | Path]) -> int | None:
    """How many emails :func:`iter_emails` will yield, for a progress bar.

    Reads every mbox once at disk speed; returns None when a path cannot be
    read (``iter_emails`` then raises the error with details).
    """
    total = 0
    try:
        for kind, path in _units(paths):
            if kind == "maildir":
                total += sum(1 for _ in _maildir_entries(path))
                continue
            with path.open("rb") as handle:
                head = handle.read(_HEAD)
                kind_of_file = _classify(head)
                if kind_of_file == "mbox":
                    handle.seek(0)
                    total += _count_mbox(handle)
                elif kind_of_file == "eml":
                    total += 1
    except (OSError, SourceError):
        return None
    return total


# -- walking ----------------------------------------------------------------------
def _units(paths: Iterable[str | Path]) -> Iterator[_Unit]:
    """Maildirs and files to read, in order; every given path is checked first,
    so that a typo fails before anything is read."""
    given = [Path(os.path.abspath(path)) for path in paths]
    for path in given:
        if not os.path.lexists(path):
            raise SourceError(f"{path}: no such file or directory")
    for path in given:
        if path.is_dir():
            yield from _walk(path)
        else:
            yield "file", path


def _walk(directory: Path) -> Iterator[_Unit]:
    if _is_maildir(directory):
        yield "maildir", directory
        return
    for entry in _scandir(directory):
        if entry.name.startswith("."):
            continue
        child = directory / entry.name
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(child)
        elif entry.is_file():
            yield "file", child


def _scandir(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except OSError as exc:
        raise SourceError(f"{directory}: cannot list the directory: {exc.strerror}") from exc


def _is_maildir(directory: Path) -> bool:
    return (directory / "cur").is_dir() and (directory / "new").is_dir()


# -- single files and mboxes ----------------------------------------------------------
def _read_file(path: Path, skip: SkipCallback) -> Iterator[tuple[bytes, EmailOrigin]]:
    try:
        with path.open("rb", buffering=_BUFFER) as handle:
            head = handle.read(_HEAD)
            kind = _classify(head)
            if kind == "eml":
                yield head + handle.read(), EmailOrigin("eml", path=str(path))
            elif kind == "mbox":
                handle.seek(0)
                for index, raw in enumerate(_split_mbox(handle)):
                    yield raw, EmailOrigin("mbox", path=str(path), key=str(index))
            else:
                skip(path, "empty file" if not head else "not an email")
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _classify(head: bytes) -> Literal["mbox", "eml"] | None:
    """``mbox``, ``eml`` or None (not mail) from the first bytes of a file."""
    if head.startswith(b"From "):
        return "mbox"
    end = min((i for i in (head.find(b"\n\n"), head.find(b"\n\r\n")) if i >= 0), default=-1)
    if end >= 0:
        block = head[: end + 1]
    elif len(head) == _HEAD:
        block = head[: head.rfind(b"\n") + 1]  # drop the line the read cut in two
    else:
        block = head  # a message that is all headers
    lines = block.splitlines()
    if not lines or b"\0" in block or not _FIELD.match(lines[0]):
        return None
    names: set[bytes] = set()
    for line in lines:
        match = _FIELD.match(line)
        if match:
            names.add(match.group(1).lower())
        elif line[:1] not in (b" ", b"\t"):
            return None
    return "eml" if names & _USUAL_FIELDS else None


def _split_mbox(handle: BinaryIO) -> Iterator[bytes]:
    """The messages of an mbox, one at a time, without their ``From `` lines."""
    lines: list[bytes] = []
    started = False
    after_blank = True  # the first line opens a message like one after a blank line
    for line in handle:
        if after_blank and line.startswith(b"From "):
            if started:
                yield _join(lines)
            lines = []
            started = True
            after_blank = False
            continue
        after_blank = line in _BLANK
        quoted = line[:1] == b">" and _QUOTED_FROM.match(line) is not None
        lines.append(line[1:] if quoted else line)
    if started:
        yield _join(lines)


def _join(lines: list[bytes]) -> bytes:
    if lines and lines[-1] in _BLANK:
        lines.pop()  # the separator before the next "From " line, not message content
    return b"".join(lines)


def _count_mbox(handle: BinaryIO) -> int:
    """Count what :func:`_split_mbox` would yield, scanning in blocks rather than lines."""
    first = handle.read(5)
    count = 1 if first == b"From " else 0
    tail = first
    patterns = (b"\n\nFrom ", b"\n\r\nFrom ")
    keep = max(len(p) for p in patterns) - 1
    while block := handle.read(_BUFFER):
        window = tail + block
        count += sum(window.count(p) for p in patterns)
        # Overlap by less than a whole pattern: no match is counted twice.
        tail = window[-keep:]
    return count


# -- Maildirs -------------------------------------------------------------------------
def _read_maildir(path: Path, skip: SkipCallback) -> Iterator[tuple[bytes, EmailOrigin]]:
    for folder, key, file in _maildir_entries(path):
        try:
            raw = file.read_bytes()
        except FileNotFoundError:
            # A live Maildir: the message was expunged or renamed (flags) since listing.
            skip(file, "vanished while reading")
            continue
        except OSError as exc:
            raise SourceError(f"{file}: cannot read: {exc.strerror}") from exc
        yield raw, EmailOrigin("maildir", path=str(folder), key=key)


def _maildir_entries(path: Path) -> Iterator[tuple[Path, str, Path]]:
    """(folder, key, file) of the Maildir's messages by key, then of its Maildir++
    sub-folders' (``.Name/``)."""
    found: list[tuple[str, Path]] = []
    for sub in ("new", "cur"):
        for entry in _scandir(path / sub):
            if not entry.name.startswith(".") and entry.is_file():
                # The part before ":2,FLAGS" is stable when a reader marks the message seen.
                found.append((entry.name.split(":", 1)[0], path / sub / entry.name))
    for key, file in sorted(found):
        yield path, key, file
    for entry in _scandir(path):
        child = path / entry.name
        if (
            entry.name.startswith(".")
            and entry.is_dir(follow_symlinks=False)
            and _is_maildir(child)
        ):
            yield from _maildir_entries(child)


def _log_skip(path: Path, reason: str) -> None:
    _log.info("skipped %s: %s", path, reason)
