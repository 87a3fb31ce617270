"""Where a Sidekiq fleet might be when the target has none: a namespaced set, a plain one
under ``--namespace``, another database. At most four bounded round trips, asked only when
the fleet is empty, with the commands the shipped ACL roles grant."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from quiesce.adapters.redis.connect import Command
from quiesce.adapters.redis.wire import _keyspace, _queue, _scanned
from quiesce.sidekiq import keys as k
from quiesce.sidekiq.rows import EmptyFleetHints, FleetElsewhere

T = TypeVar("T")


class SidekiqStore(Protocol):
    """What these lookups use of ``store.SidekiqStore`` (its error handling included)."""

    keys: k.Keys
    db: int
    _client: Any

    def _call(self, fn: Callable[[], T], *, deadline: float | None = None) -> T: ...

    def _pipeline(
        self, commands: Sequence[Command], *, transaction: bool = False, deadline: float | None
    ) -> list[Any]: ...


HINT_SCAN_COUNT = 1_000
"""One bounded ``SCAN`` looking for a namespaced ``*:processes`` when the fleet is empty."""

HINT_MAX_DBS = 16
"""Other databases looked into when the fleet is empty (Redis has 16 by default)."""

HINT_MAX_SETS = 10
"""Process sets found elsewhere whose members are sampled."""

HINT_SAMPLE = 5
"""Members of each such set checked for a live heartbeat."""


def empty_fleet_hints(store: SidekiqStore) -> EmptyFleetHints:
    """Where a Sidekiq fleet might be when this target has none, in at most four
    bounded round trips (only ever asked when the fleet is empty): ``INFO keyspace``
    and one ``SCAN`` page for ``*processes`` here, the same in each other database
    that holds keys, then a sample of each set found and whether its members still
    beat. A refused ``SCAN`` still checks the plain ``processes`` of each database."""
    own = store.keys.processes

    def look() -> tuple[Any, Any]:
        pipe = store._client.pipeline(transaction=False)
        _queue(pipe, "INFO", "keyspace")
        _queue(pipe, "SCAN", 0, "MATCH", "*processes", "COUNT", HINT_SCAN_COUNT)
        info, scan = pipe.execute(raise_on_error=False)
        return info, scan

    info, scan = store._call(look)
    dbs = {db: n for db, n in (_keyspace(info) or {}).items() if db != store.db and n > 0}
    found: dict[tuple[int, str], None] = {}
    if store.keys.namespace:
        found[(store.db, "processes")] = None
    found.update(((store.db, key), None) for key in _scanned(scan))
    others = sorted(dbs)[:HINT_MAX_DBS]
    if others:
        commands: list[Command] = []
        for db in others:
            commands += [
                ("SELECT", db),
                ("SCAN", 0, "MATCH", "*processes", "COUNT", HINT_SCAN_COUNT),
            ]
        replies = _in_dbs(store, commands)
        for i, db in enumerate(others):
            found[(db, "processes")] = None
            if not isinstance(replies[2 * i], Exception):
                found.update(((db, key), None) for key in _scanned(replies[2 * i + 1]))
    candidates = [c for c in found if c != (store.db, own)][:HINT_MAX_SETS]
    namespaced = tuple(sorted(k for db, k in candidates if db == store.db and k != "processes"))
    return EmptyFleetHints(
        namespaced=namespaced[:5],
        other_dbs=dbs,
        elsewhere=_live_sets(store, candidates),
    )


def _in_dbs(store: SidekiqStore, commands: Sequence[Command]) -> list[Any]:
    """One pipeline that ``SELECT``s other databases, and back to ours at its end (the
    connection goes back to the pool). Its final ``SELECT`` reply is left off."""
    return store._pipeline([*commands, ("SELECT", store.db)], deadline=None)[:-1]


def _live_sets(
    store: SidekiqStore, candidates: Sequence[tuple[int, str]]
) -> tuple[FleetElsewhere, ...]:
    """Per ``(db, key)``: up to ``HINT_SAMPLE`` members and how many still beat (their
    heartbeat hash exists). A set the user may not read is no finding."""
    if not candidates:
        return ()
    # SSCAN and PTTL, not SRANDMEMBER and EXISTS: the shipped ACL roles grant these.
    commands: list[Command] = []
    for db, key in candidates:
        commands += [("SELECT", db), ("SSCAN", key, 0, "COUNT", HINT_SAMPLE)]
    replies = _in_dbs(store, commands)
    samples: list[tuple[int, str, list[str]]] = []
    for i, (db, key) in enumerate(candidates):
        selected, scanned = replies[2 * i], replies[2 * i + 1]
        if isinstance(selected, Exception) or not (
            isinstance(scanned, list | tuple) and len(scanned) == 2
        ):
            continue  # not a set, refused, or the database could not be entered
        members = [str(m) for m in scanned[1]][:HINT_SAMPLE]
        if members:
            samples.append((db, key, members))
    if not samples:
        return ()
    commands = []
    for db, key, members in samples:
        prefix = key.removesuffix("processes")
        commands.append(("SELECT", db))
        commands += [("PTTL", prefix + m) for m in members]
    replies = _in_dbs(store, commands)
    out, at = [], 0
    for db, key, members in samples:
        selected, ttls = replies[at], replies[at + 1 : at + 1 + len(members)]
        at += 1 + len(members)
        if isinstance(selected, Exception):
            continue
        live = sum(1 for t in ttls if isinstance(t, int) and t != -2)  # -2: no such key
        out.append(FleetElsewhere(db, key, live, len(members), same_db=db == store.db))
    return tuple(out)
