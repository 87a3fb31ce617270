"""Terminal-safe text: everything quiesce prints that came from Redis goes through ``safe``.

A Sidekiq process hash is written by whoever can reach Redis, so a hostname, tag, label or
signal name may carry terminal escapes (OSC 52 writes the clipboard, ``ESC[2J`` clears the
screen, ``ESC[8m`` hides what follows) or bytes that are not UTF-8 (read with
``surrogateescape``). ``safe`` makes every one of them visible instead of active.
"""

from __future__ import annotations

import re

# C0 controls, DEL, C1 controls (U+0080-U+009F: a UTF-8 terminal obeys U+009B as CSI),
# every surrogate (lone ones come from non-UTF-8 bytes), and the bidi overrides that
# reorder what is shown ("Trojan Source").
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the original byte
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def safe(text: str) -> str:
    """``text`` with every control character, DEL, lone surrogate and bidi override escaped
    (``\\x1b``, ``\\n``, ``\\xff`` for an undecodable byte, ``\\u202e``); printable text,
    including non-ASCII letters, is unchanged."""
    return _UNSAFE.sub(_escape, text)
