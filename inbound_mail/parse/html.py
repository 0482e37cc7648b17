"""HTML to text for HTML-only provider bodies (the rules: :mod:`inbound_mail.parse.message`)."""

from __future__ import annotations

import html
import re

__all__ = ["html_to_text"]

# Tokens partition the input (a tag stops at the next "<"), so this is linear time.
_TOKEN = re.compile(r"<!--.*?(?:-->|\Z)|<[A-Za-z/!?][^<>]*>?", re.DOTALL)
_TAG_NAME = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9]*)")
_HIDDEN = frozenset({"style", "script", "head", "title"})
_BLOCKS = frozenset(
    re.findall(
        r"\w+",
        "p div tr li ul ol dl dt dd table thead tbody tfoot h1 h2 h3 h4 h5 h6 blockquote pre "
        "body html section article header footer center address hr form fieldset",
    )
)
_CELLS = frozenset({"td", "th"})


def html_to_text(source: str) -> str:
    out: list[str] = []
    hidden: str | None = None
    after_break = False
    position = 0
    for match in _TOKEN.finditer(source):
        if hidden is None:
            after_break = _html_text(source[position : match.start()], out, after_break)
        position = match.end()
        tag = _TAG_NAME.match(match.group())
        if tag is None:
            continue  # comment, doctype, processing instruction
        closing, name = tag.group(1) == "/", tag.group(2).lower()
        if hidden is not None:
            # <body> ends a <head> whose closing tag was left out, as in browsers.
            ends = (closing and name == hidden) or (hidden == "head" and name == "body")
            hidden = None if ends else hidden
        elif name in _HIDDEN and not closing and not match.group().endswith("/>"):
            hidden = name
        elif name == "br":
            out.append("\n")
            after_break = True
        elif name in _BLOCKS:
            if out and not out[-1].endswith("\n"):
                out.append("\n")
            after_break = True
        elif name in _CELLS and closing:
            out.append(" ")
    if hidden is None:
        _html_text(source[position:], out, after_break)
    return "".join(out)


def _html_text(chunk: str, out: list[str], after_break: bool) -> bool:
    """Append one run of text between tags; returns the new ``after_break``."""
    if not chunk:
        return after_break
    if not chunk.strip(" \t\r\n") and ("\n" in chunk or "\r" in chunk):
        return after_break  # indentation between tags
    if after_break:
        chunk = (
            chunk.removeprefix("\n") if not chunk.startswith("\r") else chunk[1:].removeprefix("\n")
        )
    if chunk:
        out.append(html.unescape(chunk))
    return False
