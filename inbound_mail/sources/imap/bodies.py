"""``UID FETCH uids (BODY.PEEK[])``, read at the cost of a regular expression per email.

imapclient's :meth:`~imapclient.IMAPClient.fetch` runs every response line through its
pure-Python tokenizer: in a backfill that is a third of what the single writer spends per
email, besides the parse.  The answer to a body FETCH almost always has one shape per
email: ``* n (UID u BODY[] {size}`` + the literal + ``)`` (or with ``UID u`` after the
literal).  That shape is read here with two regular expressions on what imaplib already
split; anything else in the answer (an unsolicited ``FLAGS`` update, another order, an
extra item) sends the whole answer through imapclient's own parser, so the result never
depends on the shortcut.  Either way the answer is the same mapping: UID -> body; an
email expunged since the SEARCH is simply absent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from imapclient.response_parser import parse_fetch_response

__all__ = ["fetch_bodies"]

_HEAD = re.compile(rb"\d+ \((?:UID (\d+) )?BODY\[\] \{\d+\}")
_TAIL = re.compile(rb"(?: UID (\d+))?\)")


def fetch_bodies(client: IMAPClient, uids: Sequence[int]) -> dict[int, bytes]:
    """The full message of each of ``uids`` still in the folder, never setting ``\\Seen``.

    Raises :class:`~imapclient.exceptions.IMAPClientError` when the server refuses
    the FETCH, as :meth:`IMAPClient.fetch` does, and imaplib's errors when the
    connection fails."""
    if not uids:
        return {}
    imap = client._imap  # imaplib's connection: imapclient's fetch drives it the same way
    typ, data = imap.uid("FETCH", ",".join(str(uid) for uid in uids), "(BODY.PEEK[])")
    if typ != "OK":
        text = data[0].decode("utf-8", "replace") if data and data[0] else ""
        raise IMAPClientError(f"fetch failed: {text}")
    wanted = set(uids)
    bodies = _read_simple(data)
    if bodies is None:
        parsed = parse_fetch_response(data, client.normalise_times, True)
        # A BODY[] of NIL (a server that cannot read the file) counts as absent, as before.
        bodies = {
            int(uid): bytes(item[b"BODY[]"])
            for uid, item in parsed.items()
            if item.get(b"BODY[]") is not None
        }
    return {uid: body for uid, body in bodies.items() if uid in wanted}


def _read_simple(data: list[Any]) -> dict[int, bytes] | None:
    """UID -> body when every element of ``data`` has the usual shape, else None."""
    bodies: dict[int, bytes] = {}
    index = 0
    while index < len(data):
        element = data[index]
        if element is None:  # imaplib's placeholder for an empty answer
            index += 1
            continue
        if not (isinstance(element, tuple) and index + 1 < len(data)):
            return None
        head, body = element
        tail = data[index + 1]
        first = _HEAD.fullmatch(head)
        last = _TAIL.fullmatch(tail) if isinstance(tail, bytes) else None
        if first is None or last is None or not isinstance(body, bytes):
            return None
        uids = [uid for uid in (first.group(1), last.group(1)) if uid is not None]
        if len(uids) != 1:
            return None
        bodies[int(uids[0])] = body
        index += 2
    return bodies
