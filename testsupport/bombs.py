"""Crafted emails that once cost seconds of CPU each: the bomb corpus (issue 11).

:func:`bombs` builds every kind, from a configured sender (``ours``) or from
someone else, each just under the default ``max_size`` (1 MiB), in memory and in
a fraction of a second, so nothing is committed as a blob.  ``benchmarks/bomb_bench.py``
measures CPU time and memory per email over them; ``tests/test_parse_limits.py``
checks each kind's outcome.

Each entry maps a name to ``(raw, expected)``: ``expected`` is the outcome class
name the parser must return (``Rejected`` for a configured sender's bomb,
``Skipped`` for someone else's, ``SmsRecord`` for the few kinds that are still a
valid SMS once the refused charset is treated as unknown).
"""

from __future__ import annotations

from inbound_mail.testing.emails import PROVIDER_SENDER

__all__ = ["BUDGET", "bombs"]

#: Every bomb stays at or under this many bytes: the default ``max_size``.
BUDGET = 1024 * 1024

_FIELDS = b"From: +393331234567\r\nTo: +393339876543\r\nDate/Time: 20240102030405\r\nBody: hi\r\n"


def _head(sender: str, *extra: bytes) -> bytes:
    lines = [
        f"From: Agile Telecom <{sender}>".encode(),
        b"To: sms@example.it",
        b"Subject: Agile Telecom -- SMS received",
        b"Date: Tue, 02 Jan 2024 03:04:06 +0100",
        b"Message-ID: <bomb@smsin.agiletelecom.com>",
        b"MIME-Version: 1.0",
        *extra,
    ]
    return b"\r\n".join(lines) + b"\r\n"


def _fill(unit: bytes, room: int) -> bytes:
    return unit * max(0, room // len(unit))


def _kinds(sender: str) -> dict[str, bytes]:
    plain = b"Content-Type: text/plain; charset=utf-8"
    room = BUDGET - 2048
    boundary = b"b0undary"
    kinds = {
        # A quadratic decoder reached through the declared charset of the body.
        "punycode_body": _head(sender, b"Content-Type: text/plain; charset=punycode")
        + b"\r\n"
        + _FIELDS
        + b"-"
        + _fill(b"a", room),  # one insertion per "a", each into a longer list
        # The same through an encoded word in the Subject.
        "punycode_subject": _head(sender, plain).replace(
            b"Subject: Agile", b"Subject: =?punycode?q?" + _fill(b"a-", 1_500) + b"?= Agile"
        )
        + b"\r\n"
        + _FIELDS,
        # ~70k encoded words in the Subject (stdlib decode_header).
        "encoded_words_subject": _head(sender, plain).replace(
            b"Subject: Agile", b"Subject: " + _fill(b"=?utf-8?q?a?= ", room) + b"Agile"
        )
        + b"\r\n"
        + _FIELDS,
        # ~100k Content-Type parameters.
        "content_type_params": _head(
            sender, b"Content-Type: text/plain; charset=utf-8" + _fill(b"; a=b", room)
        )
        + b"\r\n"
        + _FIELDS,
        # Content-Disposition parameters.
        "content_disposition_params": _head(
            sender, plain, b"Content-Disposition: inline" + _fill(b"; a=b", room)
        )
        + b"\r\n"
        + _FIELDS,
        # ~90k addresses in From.
        "from_addresses": _head(sender, plain).replace(
            b"From: Agile Telecom <", b"From: " + _fill(b"a@b.c, ", room) + b"<"
        )
        + b"\r\n"
        + _FIELDS,
        # ~60k To headers.
        "to_headers": _head(sender, plain, _fill(b"To: a@b.c\r\n", room).rstrip(b"\r\n"))
        + b"\r\n"
        + _FIELDS,
        # Addresses in one To header.
        "to_addresses": _head(sender, plain, b"Cc: " + _fill(b"a@b.c, ", room) + b"d@e.f")
        + b"\r\n"
        + _FIELDS,
        # Encoded words in the From display name.
        "encoded_words_display_name": _head(sender, plain).replace(
            b"From: Agile Telecom", b"From: " + _fill(b"=?utf-8?q?a?= ", room - 100)
        )
        + b"\r\n"
        + _FIELDS,
        # One very long folded header.
        "folded_header": _head(sender, plain, b"X-Long: a" + _fill(b"\r\n a", room))
        + b"\r\n"
        + _FIELDS,
        # Thousands of MIME parts, each with headers to parse.
        "mime_parts": _head(sender, b'Content-Type: multipart/mixed; boundary="' + boundary + b'"')
        + b"\r\n--"
        + boundary
        + b"\r\n"
        + plain
        + b"\r\n\r\n"
        + _FIELDS
        + _fill(b"--" + boundary + b"\r\n" + plain + b"\r\n\r\nx\r\n", room)
        + b"--"
        + boundary
        + b"--\r\n",
        # Just under the parts limit: still parsed, so its cost is the limit's.
        "mime_parts_at_limit": _head(
            sender, b'Content-Type: multipart/mixed; boundary="' + boundary + b'"'
        )
        + b"\r\n--"
        + boundary
        + b"\r\n"
        + plain
        + b"\r\n\r\n"
        + _FIELDS
        + (b"--" + boundary + b"\r\n" + plain + b"\r\n\r\nx\r\n") * 490
        + b"--"
        + boundary
        + b"--\r\n",
        # Parameters and encoded words in a sub-part's headers (the filename).
        "part_filename_words": _head(
            sender, b'Content-Type: multipart/mixed; boundary="' + boundary + b'"'
        )
        + b"\r\n--"
        + boundary
        + b"\r\n"
        + plain
        + b"\r\n\r\n"
        + _FIELDS
        + b"--"
        + boundary
        + b"\r\nContent-Type: application/octet-stream\r\n"
        + b'Content-Disposition: attachment; filename="'
        + _fill(b"=?utf-8?q?a?= ", room - 200)
        + b'"\r\n\r\nx\r\n--'
        + boundary
        + b"--\r\n",
        # A header block of nothing but one-character header lines.
        "many_headers": _head(sender, plain, _fill(b"X: a\r\n", room).rstrip(b"\r\n"))
        + b"\r\n"
        + _FIELDS,
        # Nested multiparts, deeper than the recursion limit.
        "deep_nesting": _nested(sender, 5000),
        # Body declared in codecs that are not charsets.
        "zlib_body": _head(sender, b"Content-Type: text/plain; charset=zlib") + b"\r\n" + _FIELDS,
        "rot13_body": _head(sender, b"Content-Type: text/plain; charset=rot13") + b"\r\n" + _FIELDS,
        "idna_subject": _head(sender, plain).replace(
            b"Subject: Agile", b"Subject: =?idna?q?" + _fill(b"a.", 1_500) + b"?= Agile"
        )
        + b"\r\n"
        + _FIELDS,
        # The same attacks kept inside a 64 KiB header block, to hit each limit.
        "subject_words_64k": _head(sender, plain).replace(
            b"Subject: Agile", b"Subject: " + _fill(b"=?utf-8?q?a?= ", 60_000) + b"Agile"
        )
        + b"\r\n"
        + _FIELDS,
        "spread_words_64k": _head(sender, plain, *[b"X-W: " + _fill(b"=?utf-8?q?a?= ", 7000)] * 8)
        + b"\r\n"
        + _FIELDS,
        "content_type_params_64k": _head(
            sender, b"Content-Type: text/plain; charset=utf-8" + _fill(b"; a=b", 7000)
        )
        + b"\r\n"
        + _FIELDS,
        "to_headers_64k": _head(sender, plain, _fill(b"To: a@b.c\r\n", 60_000).rstrip(b"\r\n"))
        + b"\r\n"
        + _FIELDS,
        "to_addresses_64k": _head(sender, plain, b"To: " + _fill(b"a@b.c, ", 7000) + b"d@e.f")
        + b"\r\n"
        + _FIELDS,
        "display_name_words_2k": _head(sender, plain).replace(
            b"From: Agile Telecom", b"From: " + _fill(b"=?utf-8?q?a?= ", 1900)
        )
        + b"\r\n"
        + _FIELDS,
    }
    return kinds


def _nested(sender: str, depth: int) -> bytes:
    body = b"Content-Type: text/plain\r\n\r\n" + _FIELDS
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(depth)
    )
    closing = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(depth)))
    return _head(sender) + opening + body + closing


# Kinds that are still a valid SMS from a configured sender: the refused charset
# is unknown, so the body is read as UTF-8, as for any unknown charset.
_STILL_SKIPPED = frozenset({"from_addresses", "encoded_words_display_name"})
_STILL_VALID = frozenset(
    {
        "to_addresses_64k",
        "mime_parts_at_limit",
        "zlib_body",
        "rot13_body",
        "punycode_subject",
        "idna_subject",
    }
)


def bombs() -> dict[str, tuple[bytes, str]]:
    """Every bomb kind, from the provider (``ours_*``) and from a stranger (``other_*``)."""
    corpus: dict[str, tuple[bytes, str]] = {}
    for name, raw in _kinds(PROVIDER_SENDER).items():
        expected = "SmsRecord" if name in _STILL_VALID else "Rejected"
        corpus[f"ours_{name}"] = (raw, "Skipped" if name in _STILL_SKIPPED else expected)
    for name, raw in _kinds("stranger@example.org").items():
        corpus[f"other_{name}"] = (raw, "Skipped")
    for name, (raw, _) in corpus.items():
        assert len(raw) <= BUDGET, (name, len(raw))
    return corpus
