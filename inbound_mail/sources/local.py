"""Streaming readers for local mail exports: mbox files, Maildirs, single messages.

The kind of a path is decided by content, never by extension:

- a directory holding ``cur/`` and ``new/`` is a Maildir (its Maildir++
  sub-folders, ``.Name/``, are read after it), read by message name, ``new/``
  and ``cur/`` together, in passes that each list it again and keep the next
  20,000 names: memory does not grow with its size (see ``_maildir_entries``);
- any other directory is walked recursively in sorted name order, skipping
  hidden entries and not following directory symlinks;
- a file whose first line starts with ``From `` is an mbox;
- a file that starts with an RFC 5322 header block naming at least one
  usual header (``From``, ``Subject``, ``Received``, ...) is one message;
- anything else (a ``.json`` or ``README.md`` beside ``.eml`` files) is not
  mail: it yields nothing and is reported through ``on_skip``, and so is a
  FIFO, socket or device found in a folder.

A path that cannot be read (a folder that cannot be listed, a file that cannot
be opened or fails mid-read, a symbolic link that loops or dangles, a FIFO
named on the command line) is reported through ``on_error`` with the reason,
and everything else is still read: one bad path never costs the rest of the
export.  Without ``on_error`` it raises :class:`SourceError` instead.

An mbox is split line by line on ``From `` lines that open the file or follow
a blank line, one message in memory at a time, so a 100k-message export reads
with flat memory.  ``>From `` lines are unquoted the mboxrd way (one ``>``
removed from ``>+From ``), which also undoes mboxo quoting; the blank line
that separates messages is not part of them.  CRLF files keep their CRLFs.
"""

from __future__ import annotations

import bisect
import errno
import io
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Literal

from ..errors import SourceError
from ..models import EmailOrigin

__all__ = ["ErrorCallback", "SkipCallback", "count_emails", "first_of_mbox", "iter_emails"]

_log = logging.getLogger(__name__)

#: Called with a path that holds no mail and the reason, e.g. ``"not an email"``.
SkipCallback = Callable[[Path, str], None]
#: Called with a path that cannot be read and the reason, e.g. ``"Permission denied"``.
ErrorCallback = Callable[[Path, str], None]

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
    paths: Iterable[str | Path],
    *,
    on_skip: SkipCallback | None = None,
    on_error: ErrorCallback | None = None,
) -> Iterator[tuple[bytes, EmailOrigin]]:
    """Every email under ``paths`` with its origin, in a deterministic order.

    Origins carry the absolute path; ``key`` is the message's 0-based index for
    an mbox, the unique name (without ``:2,flags``) for a Maildir, None for a
    single message.  Files that are not mail go to ``on_skip`` (default:
    logged).  A path that cannot be read goes to ``on_error`` and the rest is
    read; without ``on_error``, :class:`SourceError` names it.  A given path
    that does not exist always raises, before anything is read.
    """
    skip = on_skip or _log_skip
    error = on_error or _raise
    for kind, path in _units(paths, error):
        if kind == "maildir":
            yield from _read_maildir(path, skip, error)
        else:
            yield from _read_file(path, skip, error)


def count_emails(paths: Iterable[str | Path]) -> int | None:
    """How many emails :func:`iter_emails` will yield, for a progress bar.

    Reads every mbox once at disk speed and lists every Maildir once; what cannot
    be read counts for nothing (``iter_emails`` reports it).  None when a given path
    does not exist.
    """
    total = 0

    def ignore(path: Path, reason: str) -> None:
        pass

    try:
        for kind, path in _units(paths, ignore):
            if kind == "maildir":
                total += _count_maildir(path)
                continue
            try:
                with _open_regular(path) as handle:
                    head = handle.read(_HEAD)
                    kind_of_file = _classify(head)
                    if kind_of_file == "mbox":
                        handle.seek(0)
                        total += _count_mbox(handle)
                    elif kind_of_file == "eml":
                        total += 1
            except OSError:
                continue
    except SourceError:
        return None
    return total


# -- walking ----------------------------------------------------------------------
def _units(paths: Iterable[str | Path], error: ErrorCallback) -> Iterator[_Unit]:
    """Maildirs and files to read, in order; every given path is checked first,
    so that a typo fails before anything is read."""
    given = [Path(os.path.abspath(path)) for path in paths]
    for path in given:
        if not os.path.lexists(path):
            raise SourceError(f"{path}: no such file or directory")
    for path in given:
        if os.path.isdir(path):  # False, not an error, for a link that loops or dangles
            yield from _walk(path, error)
        else:
            yield "file", path  # a link that loops or dangles is reported when opened


def _walk(directory: Path, error: ErrorCallback) -> Iterator[_Unit]:
    if _is_maildir(directory):
        yield "maildir", directory
        return
    for entry in _scandir(directory, error):
        if entry.name.startswith("."):
            continue
        child = directory / entry.name
        try:
            is_folder = entry.is_dir(follow_symlinks=False)
            mode = os.stat(child).st_mode  # through a link: one that loops or dangles fails
        except OSError as exc:
            error(child, _reason(exc))
            continue
        if is_folder:
            yield from _walk(child, error)
        elif not stat.S_ISDIR(mode):  # a link to a folder is not followed: it could loop
            yield "file", child  # a FIFO, socket or device is reported as not mail


def _scandir(directory: Path, error: ErrorCallback) -> list[os.DirEntry[str]]:
    """The folder's entries by name; [] (reported) when it cannot be listed."""
    try:
        with os.scandir(directory) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except OSError as exc:
        error(directory, f"cannot list the folder: {_reason(exc)}")
        return []


def _listing(directory: Path, error: ErrorCallback) -> Iterator[os.DirEntry[str]]:
    """The folder's entries in the order the system lists them, one at a time (a
    Maildir's ``cur/`` may hold 100k); a folder that cannot be listed is reported."""
    try:
        with os.scandir(directory) as entries:
            yield from entries
    except OSError as exc:
        error(directory, f"cannot list the folder: {_reason(exc)}")


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _raise(path: Path, reason: str) -> None:
    raise SourceError(f"cannot read {path}: {reason}")


def _open_regular(path: Path) -> BinaryIO:
    """Open a regular file for reading; OSError for anything else: a FIFO would block
    the import for ever, a device would never end."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=_BUFFER)
    except BaseException:
        os.close(fd)
        raise


def _is_maildir(directory: Path) -> bool:
    try:
        return (directory / "cur").is_dir() and (directory / "new").is_dir()
    except OSError:
        return False  # a folder that cannot be searched: listing it reports why


# -- single files and mboxes ----------------------------------------------------------
def _read_file(
    path: Path, skip: SkipCallback, error: ErrorCallback
) -> Iterator[tuple[bytes, EmailOrigin]]:
    try:
        handle = _open_regular(path)
    except OSError as exc:
        if exc.errno == errno.EINVAL and os.path.exists(path):
            skip(path, "not a regular file")  # a FIFO, socket or device
        else:
            error(path, _reason(exc))
        return
    with handle:
        # The emails before a read error are yielded (and stored); the rest is reported.
        try:
            head = handle.read(_HEAD)
            kind = _classify(head)
            if kind == "eml":
                raw = head + handle.read()
                yield raw, EmailOrigin("eml", path=str(path))
            elif kind == "mbox":
                handle.seek(0)
                for index, raw in enumerate(_split_mbox(handle)):
                    yield raw, EmailOrigin("mbox", path=str(path), key=str(index))
            else:
                skip(path, "empty file" if not head else "not an email")
        except OSError as exc:
            error(path, _reason(exc))


def first_of_mbox(data: bytes) -> tuple[bytes, int] | None:
    """``(first email, number of emails)`` when ``data`` is an mbox, else None."""
    if _classify(data[:_HEAD]) != "mbox":
        return None
    messages = _split_mbox(io.BytesIO(data))
    first = next(messages, b"")
    return first, 1 + sum(1 for _ in messages)


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
#: Messages a Maildir listing holds at once, at least (a module constant the tests
#: lower).  A pass keeps the smallest of these and cuts when it holds one and a half
#: times as many: at ~80-120 bytes a line (short names, Dovecot's) that is 2.5-3.5 MB,
#: against ~8 MB for 100k messages listed whole, so an import's memory is the same at
#: 10k and at 100k messages (issue 15).  Each pass is one more scan of ``new/`` and
#: ``cur/`` (~0.7 s for a million entries here): past ``_MAILDIR_BATCH *
#: _MAILDIR_PASSES`` messages the batch grows instead, so that a listing never takes
#: more than about that many scans (a million messages: 9 scans and ~15 MB, against
#: one scan and ~200 MB for a whole listing, or 50 scans at a fixed batch).
_MAILDIR_BATCH = 20_000
_MAILDIR_PASSES = 8


def _read_maildir(
    path: Path, skip: SkipCallback, error: ErrorCallback
) -> Iterator[tuple[bytes, EmailOrigin]]:
    for folder, key, file in _maildir_entries(path, error):
        try:
            with open(file, "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            # A live Maildir: the message was expunged or renamed (flags) since listing.
            skip(Path(file), "vanished while reading")
            continue
        except OSError as exc:
            error(Path(file), _reason(exc))
            continue
        yield raw, EmailOrigin("maildir", path=str(folder), key=key)


def _maildir_entries(path: Path, error: ErrorCallback) -> Iterator[tuple[Path, str, str]]:
    """(folder, key, file) of the Maildir's messages by key, then of its Maildir++
    sub-folders' (``.Name/``).  The file is a ``str``: a Path interns every name it is
    built from, growing (and copying) the interpreter's table of interned strings for
    names used once.

    The order is that of one sort of every message, ``new/`` and ``cur/`` together,
    by key, then ``cur`` before ``new``, then name; but memory is bounded: each pass
    lists the folder again and keeps only the next :data:`_MAILDIR_BATCH` messages
    after the last one yielded.  A pass ends on a whole key, so a message renamed
    between passes (``new/`` to ``cur/``, flags changed) is not read twice; what is
    renamed or expunged after its pass listed it is skipped as "vanished while
    reading", as with a single listing.
    """
    reported: set[Path] = set()

    def once(folder: Path, reason: str) -> None:
        # Every pass lists the folder again: one that cannot be listed is news once.
        if folder not in reported:
            reported.add(folder)
            error(folder, reason)

    new, cur = os.path.join(path, "new", ""), os.path.join(path, "cur", "")
    start: str | None = ""
    keep = _MAILDIR_BATCH
    while start is not None:
        batch, start, listed = _maildir_pass(path, start, once, keep)
        # A pass scans every entry: in a large Maildir the batch grows, so that
        # at most _MAILDIR_PASSES more passes follow the first.
        keep = max(_MAILDIR_BATCH, -(-listed // _MAILDIR_PASSES))
        for index, line in enumerate(batch):
            batch[index] = ""  # each name is freed once yielded
            key, tail = line.split("\0", 1)
            yield path, key, f"{cur if tail[0] == 'c' else new}{key}{tail[1:]}"
        del batch
    for child in _maildir_subfolders(path, error):
        yield from _maildir_entries(child, error)


def _maildir_subfolders(path: Path, error: ErrorCallback) -> Iterator[Path]:
    """The Maildir++ sub-folders (``.Name/``) of a Maildir, by name."""
    for entry in _scandir(path, error):
        child = path / entry.name
        if (
            entry.name.startswith(".")
            and entry.is_dir(follow_symlinks=False)
            and _is_maildir(child)
        ):
            yield child


def _maildir_pass(
    path: Path, start: str, error: ErrorCallback, keep: int
) -> tuple[list[str], str | None, int]:
    """The Maildir's messages from line ``start`` on, sorted, at most about ``keep``
    of them; where the next pass starts (None: this one reached the end); and how
    many entries ``new/`` and ``cur/`` hold.

    A message is one string, ``key\\0`` + ``c`` or ``n`` (its sub-folder) + the rest
    of its name after the key, ordered as the (key, sub-folder, name) it stands
    for (NUL sorts first and no file name holds one) at the least memory: the key
    is the part before ``:2,FLAGS``, stable when a reader marks the message seen.
    """
    low = start.split("\0", 1)[0]
    listed = 0
    stop: str | None = None  # once cut, every line from here on is left to a later pass
    high: str | None = None  # the key of ``stop``: no line of a larger one is kept
    batch: list[str] = []
    for sub in ("new", "cur"):
        letter = sub[0]
        try:
            with os.scandir(path / sub) as entries:
                for entry in entries:
                    listed += 1
                    name = entry.name
                    # Cheap tests first, on the name and then on the key: a pass looks
                    # at every message and keeps few.  A name below the first key holds
                    # no line at or after ``start`` (what earlier passes yielded).
                    if name < low:
                        continue
                    key = name.partition(":")[0]
                    if (high is not None and key > high) or name.startswith("."):
                        continue
                    line = f"{key}\0{letter}{name[len(key) :]}"
                    if line < start or (stop is not None and line >= stop):
                        continue
                    if not entry.is_file():
                        continue
                    batch.append(line)
                    if len(batch) > keep + keep // 2:
                        stop = _cut(batch, keep)
                        high = stop.split("\0", 1)[0]
        except OSError as exc:
            error(path / sub, f"cannot list the folder: {_reason(exc)}")
    batch.sort()
    if len(batch) > keep:
        stop = _cut(batch, keep)
    return batch, stop, listed


def _count_maildir(path: Path) -> int:
    """How many messages :func:`_maildir_entries` lists, in one scan and no sort."""

    def ignore(path: Path, reason: str) -> None:
        pass

    total = 0
    for sub in ("new", "cur"):
        for entry in _listing(path / sub, ignore):
            if not entry.name.startswith(".") and entry.is_file():
                total += 1
    return total + sum(_count_maildir(child) for child in _maildir_subfolders(path, ignore))


def _cut(batch: list[str], keep: int) -> str:
    """Sort ``batch``, cut it to at most ``keep`` lines, ending on a whole key where
    one fits, and return the first line cut off (where everything cut starts)."""
    batch.sort()  # C-level; the kept part is already sorted, which timsort merges
    first_cut = batch[keep]
    stop = first_cut.split("\0", 1)[0] + "\0"  # every line of the cut line's key
    end = bisect.bisect_left(batch, stop, 0, keep)
    if end == 0:
        # One key holds more than a batch (a hostile Maildir): cut inside it, by name.
        end, stop = keep, first_cut
    del batch[end:]
    return stop


def _log_skip(path: Path, reason: str) -> None:
    _log.info("skipped %s: %s", path, reason)
