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


def plural(n: int, noun: str, many: str | None = None) -> str:
    """``1 process``, ``2 processes``: the one way quiesce counts things in text."""
    return f"{n} {noun if n == 1 else many or noun + 's'}"


def duration(seconds: float | None) -> str:
    """The one way quiesce shows a length of time: ``31s``, ``1m14s``, ``1h02m``, ``2d03h``;
    ``-`` when unknown. Whole seconds: every figure it shows is a heartbeat apart at best."""
    if seconds is None:
        return "-"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``5m``, ``1h30m`` or ``500ms`` (Go's and fly.toml's
    spellings; a bare number is seconds): the one parser for every ``--timeout``-like
    option and for fly.toml. Raises ``ValueError`` naming the text for anything else
    (``nan``, ``inf``, ``-5``, ``5 m``)."""
    value = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        return float(value)
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"{text!r} is not a duration (e.g. 90, 90s, 5m, 1h30m)")
    return sum(float(n) * _UNITS[u] for n, u in parts)
