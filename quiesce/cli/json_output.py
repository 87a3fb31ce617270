"""``--json`` output: indented for a person at a terminal, else one compact line written a
Machine at a time (orjson where it is installed, json's C encoder otherwise)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

import typer

_orjson: Any
try:  # --json's encoder; json's own is the fallback
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised by tests/unit/cli/test_json_output.py
    _orjson = None


def echo_json(data: Any) -> None:
    """Indented for a person at a terminal; otherwise one compact line, from orjson (7x
    json's C encoder, itself far ahead of the pure-Python one ``indent`` forces: ~40% of
    ``status --json`` at 10,000 processes), written a Machine at a time so the whole text
    is never held (the view may hand over ``machines`` as an iterator). The same document
    either way."""
    try:
        tty = sys.stdout.isatty()
    except (AttributeError, ValueError):  # no stdout, or a closed one
        tty = False
    if tty:
        typer.echo(json.dumps(data, indent=2, default=_lazy_list))
        return
    sys.stdout.flush()  # anything already written as text goes first
    binary = getattr(sys.stdout, "buffer", None)
    write: Callable[[bytes], Any] = (
        binary.write if binary is not None else lambda b: sys.stdout.write(b.decode("utf-8"))
    )
    pending: list[bytes] = []
    size = 0
    for chunk in _json_chunks(data, depth=2):
        pending.append(chunk)
        size += len(chunk)
        if size > 1 << 16:
            write(b"".join(pending))
            pending, size = [], 0
    pending.append(b"\n")
    write(b"".join(pending))
    (binary or sys.stdout).flush()


def _json_chunks(value: Any, depth: int) -> Iterator[bytes]:
    """``value`` as compact JSON in pieces: containers ``depth`` levels down are opened
    here, whatever lies below is encoded whole (a dict with a key that is not a string
    too)."""
    if depth and isinstance(value, dict) and value and all(type(key) is str for key in value):
        sep = b"{"
        for key, item in value.items():
            yield sep + _encode(key) + b":"
            yield from _json_chunks(item, depth - 1)
            sep = b","
        yield b"}"
    elif depth and isinstance(value, list | Iterator):  # an iterator: a lazy list
        sep = b"["
        for item in value:
            yield sep
            yield from _json_chunks(item, depth - 1)
            sep = b","
        yield b"[]" if sep == b"[" else b"]"
    else:
        yield _encode(value)


def _encode(value: Any) -> bytes:
    """orjson, or json where orjson refuses (text holding a byte that is not UTF-8, kept
    as a lone surrogate that json escapes; integers past 64 bits; keys that are not
    strings) or is not installed (the binaries' locks may leave it out)."""
    if _orjson is not None:
        try:
            return bytes(_orjson.dumps(value, default=_lazy_list))
        except TypeError:  # orjson.JSONEncodeError is one
            pass
    return json.dumps(value, separators=(",", ":"), default=_lazy_list).encode("ascii")


def _lazy_list(value: object) -> list[Any]:
    """An iterator in a document is a list built while it is written (``lazy`` views)."""
    if isinstance(value, Iterator):
        return list(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
