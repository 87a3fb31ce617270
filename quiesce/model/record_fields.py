"""Reading a deploy record's JSON tolerantly: typed field readers that reject what a
hostile or older writer left, and the caps on what one heartbeat can copy into a record."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

CAP_IDENTITY = 1024
"""Longest process identity (and hostname) a record stores; a process with a longer
identity is left out of the record (its signal still goes out)."""


CAP_TEXT = 256
"""Longest tag, label, version or failure a record stores (longer: truncated)."""


CAP_LABELS = 32
"""Most labels a record stores per process."""


CAP_MACHINES = 10_000
"""Most Fly Machines a record stores (Fly's own limit per app is far below)."""


T = TypeVar("T")


class _Bad(Exception):
    """Internal: one field of the wrong type; the message names it."""


def _show(value: object) -> str:
    return repr(value)[:40]


def _get(data: Mapping[str, Any], key: str, check: Callable[[Any], T | None], what: str) -> T:
    value = check(data.get(key))
    if value is None:
        raise _Bad(f"{key!r} is not {what}: {_show(data.get(key))}")
    return value


def _opt(
    data: Mapping[str, Any], key: str, check: Callable[[Any], T | None], what: str
) -> T | None:
    if data.get(key) is None:
        return None
    return _get(data, key, check, what)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _plain_number(value: Any) -> bool:
    """None, or a finite int or float (never a bool): the fast paths' check."""
    return value is None or (type(value) in (int, float) and math.isfinite(value))


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _boolean(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _object(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, dict) else None


def _texts(value: Any) -> tuple[str, ...] | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return tuple(value)


def _cap(text: str | None) -> str | None:
    return text[:CAP_TEXT] if text is not None else None


def has_surrogates(text: str) -> bool:
    """Non-UTF-8 bytes, as the Redis adapter decodes them (``errors="surrogateescape"``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
