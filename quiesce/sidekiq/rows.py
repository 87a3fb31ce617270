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
    work: Mapping[str, Mapping[str, str]] | None = None
    """``HGETALL`` of each work hash by suffix (``:work``, ``:workers``); None: not read."""


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
    """``INFO server`` run_id (None when INFO is refused): tells two URLs of one server apart
    from two servers, and a restarted server from the one the snapshot read."""
    db: int = 0
    scope: str | None = None
    """The scope whose ledger was read (None: no scope given, only ``latest_deploy``)."""
    ledger: Mapping[str, str] | None = None
    """``HGETALL`` of the scope's ledger: deploy id -> record JSON (None: not read)."""
    keyspace: Mapping[int, int] | None = None
    """``INFO keyspace``: key count per database of this server (None: refused)."""


@dataclasses.dataclass(frozen=True, slots=True)
class PollRow:
    """What one poll pipeline returns for one target."""

    in_set: bool | None
    quiet: str | None
    beat: str | None
    pttl_ms: int | None
    """-2: the hash is gone; -1: it has no TTL."""
    signals_len: int | None
    error: str | None = None
    """Redis answered this target's commands with an error: nothing else here is known."""
    busy: str | None = None
    """The ``busy`` field (read only when draining)."""
    work: Mapping[str, str] | None = None
    """The work hash(es) merged, tid -> entry (read only when draining; None: not read)."""

    @property
    def hash_alive(self) -> bool:
        return self.pttl_ms is not None and self.pttl_ms != -2


@dataclasses.dataclass(frozen=True, slots=True)
class LedgerWrite:
    """One record into a scope's ledger hash (``HSET`` + ``EXPIRE``), and the entries to
    drop from it (``HDEL``: past the history's caps, unreadable or expired)."""

    key: str
    deploy_id: str
    body: str
    ttl_s: int
    drop: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class ServerIdentity:
    """Which Redis server (and which incarnation of it) answered."""

    run_id: str | None
    """``INFO server`` run_id: changes when the server restarts (None if INFO is refused)."""
    uptime_s: int | None
    db: int


@dataclasses.dataclass(frozen=True, slots=True)
class Poll:
    """One poll of the targets: the Redis time (ms), the server, one row per target."""

    now_ms: int
    server: ServerIdentity
    rows: tuple[PollRow, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Push:
    """One atomic push: the Redis time (ms) just before it, and per identity the
    error Redis answered for its ``LPUSH``/``EXPIRE`` (absent when it went in)."""

    pushed_at_ms: int
    errors: Mapping[str, str]


@dataclasses.dataclass(frozen=True, slots=True)
class EmptyFleetHints:
    """What an empty ``processes`` set might mean: looked up once, bounded."""

    namespaced: tuple[str, ...]
    """Keys ending in ``:processes`` (a redis-namespace prefix not given)."""
    other_dbs: Mapping[int, int]
    """Other databases of this server and their key counts (``INFO keyspace``)."""
    elsewhere: tuple[FleetElsewhere, ...] = ()
    """Sidekiq ``processes`` sets this target does not read, with live members."""


@dataclasses.dataclass(frozen=True, slots=True)
class FleetElsewhere:
    """A Sidekiq process set of this server that the target does not read: another
    namespace, no namespace, or another database."""

    db: int
    key: str
    live: int
    """Of the sampled members, how many still have their heartbeat hash."""
    sampled: int
    same_db: bool = True
    """In the target's own database (another namespace, or none)."""
