"""Which declared charsets are decoded: the WHATWG encoding labels, nothing else.

Python's codec registry is not a list of charsets: ``punycode``, ``idna``,
``rot13``, ``uu``, ``zlib``, ``base64``, ``bz2``, ``utf-7`` and friends are all
found by :func:`codecs.lookup`, and some are quadratic (a 1 MiB body declared
``charset=punycode`` cost half a minute).  Mail only ever needs the encodings a
browser knows, so :func:`codec_for` accepts exactly the labels of the WHATWG
Encoding Standard (https://encoding.spec.whatwg.org/#names-and-labels) that
Python can decode, under the codec Python has always given them (so decoding of
real mail does not change).  Anything else is an *unknown charset*: the parser's
usual fallback (UTF-8, then Windows-1252) applies.

:func:`neutralise` applies the same rule to a parsed message before its body and
mail-parser's Subject decoder read it: a ``charset`` parameter or an RFC 2047
encoded word naming anything but a WHATWG label is renamed to :data:`UNKNOWN`,
which no codec answers to.
"""

from __future__ import annotations

import codecs
import email.message
import re

__all__ = ["UNKNOWN", "codec_for", "neutralise", "neutralise_value"]

#: What a refused charset label becomes: no codec answers to it, so every
#: decoder takes its fallback for an unknown charset.
UNKNOWN = "x-unknown-charset"

# The WHATWG labels (lower-case), grouped by encoding.  "replacement" and
# "x-user-defined" are left out: Python has no such codec, so they are unknown.
_WHATWG_LABELS = """
unicode-1-1-utf-8 unicode11utf8 unicode20utf8 utf-8 utf8 x-unicode20utf8
866 cp866 csibm866 ibm866
csisolatin2 iso-8859-2 iso-ir-101 iso8859-2 iso88592 iso_8859-2 iso_8859-2:1987 l2 latin2
csisolatin3 iso-8859-3 iso-ir-109 iso8859-3 iso88593 iso_8859-3 iso_8859-3:1988 l3 latin3
csisolatin4 iso-8859-4 iso-ir-110 iso8859-4 iso88594 iso_8859-4 iso_8859-4:1988 l4 latin4
csisolatincyrillic cyrillic iso-8859-5 iso-ir-144 iso8859-5 iso88595 iso_8859-5 iso_8859-5:1988
arabic asmo-708 csiso88596e csiso88596i csisolatinarabic ecma-114 iso-8859-6 iso-8859-6-e
iso-8859-6-i iso-ir-127 iso8859-6 iso88596 iso_8859-6 iso_8859-6:1987
csisolatingreek ecma-118 elot_928 greek greek8 iso-8859-7 iso-ir-126 iso8859-7 iso88597
iso_8859-7 iso_8859-7:1987 sun_eu_greek
csiso88598e csisolatinhebrew hebrew iso-8859-8 iso-8859-8-e iso-ir-138 iso8859-8 iso88598
iso_8859-8 iso_8859-8:1988 visual csiso88598i iso-8859-8-i logical
csisolatin6 iso-8859-10 iso-ir-157 iso8859-10 iso885910 l6 latin6
iso-8859-13 iso8859-13 iso885913
iso-8859-14 iso8859-14 iso885914
csisolatin9 iso-8859-15 iso8859-15 iso885915 iso_8859-15 l9
iso-8859-16
cskoi8r koi koi8 koi8-r koi8_r
koi8-ru koi8-u
csmacintosh mac macintosh x-mac-roman
dos-874 iso-8859-11 iso8859-11 iso885911 tis-620 windows-874
cp1250 windows-1250 x-cp1250
cp1251 windows-1251 x-cp1251
ansi_x3.4-1968 ascii cp1252 cp819 csisolatin1 ibm819 iso-8859-1 iso-ir-100 iso8859-1
iso88591 iso_8859-1 iso_8859-1:1987 l1 latin1 us-ascii windows-1252 x-cp1252
cp1253 windows-1253 x-cp1253
cp1254 csisolatin5 iso-8859-9 iso-ir-148 iso8859-9 iso88599 iso_8859-9 iso_8859-9:1989 l5
latin5 windows-1254 x-cp1254
cp1255 windows-1255 x-cp1255
cp1256 windows-1256 x-cp1256
cp1257 windows-1257 x-cp1257
cp1258 windows-1258 x-cp1258
x-mac-cyrillic x-mac-ukrainian
chinese csgb2312 csiso58gb231280 gb2312 gb_2312 gb_2312-80 gbk iso-ir-58 x-gbk
gb18030
big5 big5-hkscs cn-big5 csbig5 x-x-big5
cseucpkdfmtjapanese euc-jp x-euc-jp
csiso2022jp iso-2022-jp
csshiftjis ms932 ms_kanji shift-jis shift_jis sjis windows-31j x-sjis
cseuckr csksc56011987 euc-kr iso-ir-149 korean ks_c_5601-1987 ks_c_5601-1989 ksc5601
ksc_5601 windows-949
unicodefffe utf-16be
csunicode iso-10646-ucs-2 ucs-2 unicode unicodefeff utf-16 utf-16le
"""

# WHATWG labels Python does not know, with the codec WHATWG means; every other
# label is looked up as it is (Python's answer wins where it has one).
_PYTHON_NAMES = {
    "visual": "iso8859-8",
    "logical": "iso8859-8",
    "csiso88598i": "iso8859-8",
    "iso-8859-8-i": "iso8859-8",
    "iso-8859-8-e": "iso8859-8",
    "csiso88598e": "iso8859-8",
    "iso-8859-6-e": "iso8859-6",
    "iso-8859-6-i": "iso8859-6",
    "csiso88596e": "iso8859-6",
    "csiso88596i": "iso8859-6",
    "koi8-ru": "koi8-u",
    "x-mac-ukrainian": "mac-cyrillic",
    "x-mac-cyrillic": "mac-cyrillic",
    "x-mac-roman": "mac-roman",
    "macintosh": "mac-roman",
    "mac": "mac-roman",
    "csmacintosh": "mac-roman",
    "dos-874": "cp874",
    "windows-874": "cp874",
    "iso-8859-11": "iso8859-11",
    "iso8859-11": "iso8859-11",
    "iso885911": "iso8859-11",
    "x-x-big5": "big5",
    "cn-big5": "big5",
    "csbig5": "big5",
    "cseucpkdfmtjapanese": "euc-jp",
    "x-euc-jp": "euc-jp",
    "csiso2022jp": "iso2022-jp",
    "csshiftjis": "shift-jis",
    "ms932": "cp932",
    "windows-31j": "cp932",
    "x-sjis": "shift-jis",
    "cseuckr": "euc-kr",
    "csksc56011987": "euc-kr",
    "iso-ir-149": "euc-kr",
    "korean": "euc-kr",
    "ks_c_5601-1989": "euc-kr",
    "ksc5601": "euc-kr",
    "ksc_5601": "euc-kr",
    "windows-949": "cp949",
    "csgb2312": "gbk",
    "gb_2312": "gbk",
    "gb_2312-80": "gbk",
    "x-gbk": "gbk",
    "unicodefffe": "utf-16-be",
    "csunicode": "utf-16",
    "iso-10646-ucs-2": "utf-16",
    "ucs-2": "utf-16",
    "unicode": "utf-16",
    "unicodefeff": "utf-16",
    "ecma-118": "iso8859-7",
    "elot_928": "iso8859-7",
    "sun_eu_greek": "iso8859-7",
    "greek8": "iso8859-7",
    "csisolatincyrillic": "iso8859-5",
    "csisolatinarabic": "iso8859-6",
    "csisolatingreek": "iso8859-7",
    "csisolatinhebrew": "iso8859-8",
    "csisolatin2": "iso8859-2",
    "csisolatin3": "iso8859-3",
    "csisolatin4": "iso8859-4",
    "csisolatin5": "iso8859-9",
    "csisolatin6": "iso8859-10",
    "csisolatin9": "iso8859-15",
    "csisolatin1": "latin-1",
    "csibm866": "cp866",
    "cskoi8r": "koi8-r",
    "koi": "koi8-r",
    "koi8": "koi8-r",
    "x-unicode20utf8": "utf-8",
    "unicode20utf8": "utf-8",
    "unicode11utf8": "utf-8",
    "unicode-1-1-utf-8": "utf-8",
    "x-cp1250": "cp1250",
    "x-cp1251": "cp1251",
    "x-cp1252": "cp1252",
    "x-cp1253": "cp1253",
    "x-cp1254": "cp1254",
    "x-cp1255": "cp1255",
    "x-cp1256": "cp1256",
    "x-cp1257": "cp1257",
    "x-cp1258": "cp1258",
    "iso-ir-101": "iso8859-2",
    "iso-ir-109": "iso8859-3",
    "iso-ir-110": "iso8859-4",
    "iso-ir-144": "iso8859-5",
    "iso-ir-127": "iso8859-6",
    "iso-ir-126": "iso8859-7",
    "iso-ir-138": "iso8859-8",
    "iso-ir-157": "iso8859-10",
    "iso-ir-148": "iso8859-9",
    "iso-ir-100": "latin-1",
    "asmo-708": "iso8859-6",
    "ecma-114": "iso8859-6",
    "arabic": "iso8859-6",
}


def _build() -> dict[str, str]:
    table: dict[str, str] = {}
    for label in _WHATWG_LABELS.split():
        # "iso88592" and the like: Python only knows the spellings with a separator.
        name = _PYTHON_NAMES.get(label, re.sub(r"^iso8859(\d+)$", r"iso8859-\1", label))
        try:
            table[label] = codecs.lookup(name).name
        except LookupError:  # an encoding this Python lacks: unknown, like any other
            continue
    return table


# label -> the canonical Python codec name, exactly what codecs.lookup(label) gives
# where Python knows the label (so real mail decodes as it always did).
_CODECS = _build()
_MAX_LABEL = 40  # the longest WHATWG label is 24 characters


def codec_for(label: str | None) -> str | None:
    """The Python codec for a declared charset label, or None when it is not a
    WHATWG encoding label (unknown, as an absent or misspelt one)."""
    if not label or len(label) > _MAX_LABEL:
        return None
    key = label.strip().strip("\"'").lower()
    codec = _CODECS.get(key)
    if codec is not None:
        return codec
    # Python's own spellings of the same encodings (``utf_8``, ``latin_1``,
    # ``iso8859_15``), which older mailers write: allowed when they name a codec
    # that some WHATWG label names.
    try:
        name = codecs.lookup(key).name
    except LookupError:
        return None
    return name if name in _ALLOWED else None


_ALLOWED = frozenset(_CODECS.values())
# An RFC 2047 encoded word's charset (and optional RFC 2231 language).
_ENCODED_WORD_CHARSET = re.compile(r"=\?([^?*\s]*)((?:\*[^?\s]*)?)\?([bBqQ])\?")


def neutralise(message: email.message.Message) -> bool:
    """Rename every refused charset in ``message`` (all parts, iteratively) to
    :data:`UNKNOWN`: ``charset`` parameters and encoded words in headers.
    Returns whether anything changed.  The caller bounds the parts and headers."""
    changed = False
    stack = [message]
    while stack:
        part = stack.pop()
        changed |= _neutralise_headers(part)
        charset = part.get_param("charset")
        if isinstance(charset, str) and charset != UNKNOWN and codec_for(charset) is None:
            part.set_param("charset", UNKNOWN)
            changed = True
        payload = part.get_payload()
        if isinstance(payload, list):
            stack.extend(p for p in payload if isinstance(p, email.message.Message))
    return changed


def _neutralise_headers(part: email.message.Message) -> bool:
    items = list(part.raw_items())
    fixed = [(name, _fix_words(value)) for name, value in items]
    if fixed == items:
        return False
    for name in {name.lower() for name, _ in fixed}:
        del part[name]
    for name, value in fixed:
        part.set_raw(name, value)  # same order, same raw values but the charset names
    return True


def neutralise_value(value: str) -> str:
    """One header value with the charsets of its refused encoded words renamed."""
    return _fix_words(value)


def _fix_words(value: str) -> str:
    if not isinstance(value, str) or "=?" not in value:  # compat32 values are str
        return value
    replaced = _ENCODED_WORD_CHARSET.sub(_refused_to_unknown, value)
    return value if replaced == value else replaced


def _refused_to_unknown(match: re.Match[str]) -> str:
    if match.group(1) == UNKNOWN or codec_for(match.group(1)) is not None:
        return match.group(0)
    return f"=?{UNKNOWN}{match.group(2)}?{match.group(3)}?"
