"""Row types the exporter's queue read returns (plain data, like ``rows.py``).

Kept apart from ``rows.py`` so the exporter's reads merge without touching the
release command's types.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class RawQueue:
    """``LLEN`` and ``LINDEX -1`` (the oldest job) of one ``queue:<name>``."""

    name: str
    size: int | None
    oldest: str | None
    """The oldest job's JSON, None for an empty queue."""
    error: str | None = None
    """Redis answered this queue's commands with an error (e.g. the key is not a list)."""


@dataclasses.dataclass(frozen=True, slots=True)
class RawQueues:
    """What one queue read of one Redis server returns, before any derivation."""

    time: float
    """Epoch seconds on the Redis server's clock (``TIME``)."""
    queues: tuple[RawQueue, ...]
    schedule_due: int | None
    """``ZCOUNT schedule -inf <now>``: scheduled jobs whose time has come (None: unreadable)."""
    retry_due: int | None
    paused: frozenset[str] | None
    """Sidekiq Pro's ``paused`` set (empty without Pro; None: unreadable)."""
    client_list: str | None
    """``CLIENT LIST`` as Redis sent it; None where ``CLIENT`` is refused or renamed away."""
