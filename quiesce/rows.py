"""Row types the Redis adapter returns and the pure core reads: plain data, no logic.

They live apart from both so that the adapter imports nothing from the core's
decision modules, and the core nothing from the adapter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence


@dataclasses.dataclass(frozen=True, slots=True)
class RawProcess:
    """What one snapshot pipeline returns for one member of ``processes``."""

    identity: str
    fields: Mapping[str, str | None]
    pttl_ms: int | None
    """``PTTL <identity>``: -2 when the hash is gone, -1 when it has no TTL, None: not read."""
    signals: Sequence[str] = ()
    """``LRANGE <identity>-signals 0 -1``: newest first, as LPUSH stores them."""
    redis: str = ""
    error: str | None = None
    """Set when Redis answered the row with an error (e.g. the key is not a hash)."""


@dataclasses.dataclass(frozen=True, slots=True)
class RawSnapshot:
    """What one snapshot of one Redis server returns, before decoding."""

    redis: str
    time: float
    """Epoch seconds on the Redis server's clock (``TIME``)."""
    rows: tuple[RawProcess, ...]
    connected_clients: int | None = None
    maxclients: int | None = None
    latest_deploy: str | None = None
    run_id: str | None = None
    """``INFO server`` run_id, when the adapter read it."""


@dataclasses.dataclass(frozen=True, slots=True)
class PollRow:
    """What one poll pipeline returns for one target."""

    in_set: bool
    quiet: str | None
    beat: str | None
    pttl_ms: int
    signals_len: int
