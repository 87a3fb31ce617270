"""Reading the fleet from every Redis server into one snapshot (adapter-facing, no redis).

Also the two checks that only make sense across servers or on an empty result: one
server given twice (two URLs for one database would count and signal every process
twice), and what an empty ``processes`` set probably means.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

from quiesce.errors import ConfigError, QuiesceError
from quiesce.model.decode import decode_snapshot
from quiesce.model.fleet import ProcessRecord
from quiesce.model.snapshot import FleetSnapshot
from quiesce.sidekiq import keys as k
from quiesce.sidekiq.rows import EmptyFleetHints, RawSnapshot
from quiesce.text import plural

log = logging.getLogger(__name__)


class FleetReader(Protocol):
    keys: k.Keys
    round_trips: int

    @property
    def label(self) -> str: ...

    def read_fleet(
        self, *, detail: bool = True, jobs: bool = False, scope: str | None = None
    ) -> RawSnapshot: ...

    def empty_fleet_hints(self) -> EmptyFleetHints: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Observed:
    fleet: FleetSnapshot
    run_ids: Mapping[str, str | None]
    """Per server label: the ``run_id`` the snapshot was read from (None: INFO refused)."""


def observe(
    stores: Sequence[FleetReader],
    *,
    detail: bool = True,
    allow_newer: bool = False,
    jobs: bool = False,
    scope: str | None = None,
) -> Observed:
    """``jobs``: also read every process's running jobs (same single pipeline). ``scope``
    (``quiet.scope_of``): whose deploy history to read; None reads only the pre-ledger
    latest record, whichever scope wrote it."""
    with _no_cycle_collection():
        raws = [s.read_fleet(detail=detail, jobs=jobs, scope=scope) for s in stores]
        refuse_duplicates(raws, [s.keys.namespace for s in stores])
        fleet = FleetSnapshot.merge([decode_snapshot(r, allow_newer=allow_newer) for r in raws])
    for raw, store in zip(raws, stores, strict=True):
        log.info(
            "%s: %s registered, run_id %s, %s clients (maxclients %s), %d round trips so far",
            raw.redis,
            plural(len(raw.rows), "process", "processes"),
            raw.run_id or "unknown (INFO refused)",
            raw.connected_clients if raw.connected_clients is not None else "?",
            raw.maxclients if raw.maxclients is not None else "?",
            store.round_trips,
        )
    for proc in fleet.processes:
        log.debug("%s: %s", proc.identity, _decided(proc))
    return Observed(fleet, {r.redis: r.run_id for r in raws})


def _decided(proc: ProcessRecord) -> str:
    """What quiesce made of one process, for ``-v``: its state and why."""
    version = proc.version.text if proc.version else "?"
    if proc.version is not None and proc.version.inferred:
        version = f"~{version} (inferred: no info.version)"
    beat = "?" if proc.beat_age_s is None else f"{proc.beat_age_s:.1f}s"
    why = f"; {proc.problem}" if proc.problem else ""
    notes = "".join(f"; note: {n}" for n in proc.notes)
    return (
        f"{proc.state.value} (Sidekiq {version}, quiet={str(proc.quiet).lower()}, last beat "
        f"{beat} ago, beats every {proc.beat_interval_s:g}s){why}{notes}"
    )


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """A 10,000-process read allocates ~100,000 replies and records, none in a cycle: the
    cyclic collector would walk them again and again (10-15% of ``status``'s time). It is
    paused for the read only (the exporter is long-running) and left as it was found."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


no_cycle_collection = _no_cycle_collection
"""For a one-shot command that renders what it read: the views build ~10,000 dicts and
strings more, none in a cycle (measured: ~20% of the status views' time at 10,000
processes went to the collector). Nests: an inner use leaves the collector off."""


def read_fleet(
    stores: Sequence[FleetReader],
    *,
    detail: bool = True,
    allow_newer: bool = False,
    jobs: bool = False,
    scope: str | None = None,
) -> FleetSnapshot:
    return observe(stores, detail=detail, allow_newer=allow_newer, jobs=jobs, scope=scope).fleet


def refuse_duplicates(raws: Sequence[RawSnapshot], namespaces: Sequence[str]) -> None:
    """Two URLs that reach one database (``localhost`` and ``127.0.0.1``, ``/0`` and no
    db) would double every process: refuse, naming both. Told apart by ``run_id``."""
    seen: dict[tuple[str, int, str], str] = {}
    for raw, namespace in zip(raws, namespaces, strict=True):
        if raw.run_id is None:
            continue
        key = (raw.run_id, raw.db, namespace)
        if key in seen:
            raise ConfigError(
                f"{seen[key]} and {raw.redis} are the same Redis database; give it once"
            )
        seen[key] = raw.redis


@dataclasses.dataclass(frozen=True, slots=True)
class Elsewhere:
    """What an empty target may mean: ``fleets`` are live Sidekiq fleets on the same
    servers that the target does not read (another namespace or database), each named
    in one phrase; ``notes`` are softer hints."""

    fleets: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def look_elsewhere(stores: Sequence[FleetReader], *, default_url: str | None) -> Elsewhere:
    """Where Sidekiq might be when nothing is registered here (bounded lookups)."""
    notes, fleets = [], []
    if default_url is not None:
        notes.append(f"no Redis URL given (--redis-url, REDIS_URL): used the default {default_url}")
    for store in stores:
        try:
            hints = store.empty_fleet_hints()
        except QuiesceError:
            continue  # the hints are a courtesy: a refused SCAN or INFO is not an error
        beating = [f for f in hints.elsewhere if f.live > 0]
        for found in beating:
            where = found.key if found.same_db else f"db {found.db}: {found.key}"
            fleets.append(
                f"{store.label}: {where} ({found.live} of {found.sampled} sampled members beating)"
            )
        if beating:
            continue
        if hints.namespaced:
            found_keys = ", ".join(hints.namespaced)
            notes.append(f"{store.label} has {found_keys}: is Sidekiq namespaced? (--namespace)")
        if hints.other_dbs:
            dbs = ", ".join(f"db {db} ({n} keys)" for db, n in sorted(hints.other_dbs.items()))
            notes.append(f"{store.label}: other databases hold keys: {dbs}; wrong database?")
    return Elsewhere(tuple(fleets), tuple(notes))


def empty_fleet_notes(stores: Sequence[FleetReader], *, default_url: str | None) -> list[str]:
    """Why no process may be registered: looked up only when the fleet is empty."""
    found = look_elsewhere(stores, default_url=default_url)
    live = [f"a live Sidekiq fleet is elsewhere: {f}" for f in found.fleets]
    return [*live, *found.notes]
