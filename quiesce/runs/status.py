"""``quiesce status``'s reads: one round is one fleet snapshot (the filters applied, what
each left out counted, where Sidekiq might be when nothing is registered); ``--watch``
repeats rounds until interrupted."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from quiesce.errors import ConfigError
from quiesce.model.filters import Filters, unmatched_filters
from quiesce.model.snapshot import FleetSnapshot
from quiesce.runs.read import FleetReader, empty_fleet_notes, no_cycle_collection, read_fleet

T = TypeVar("T")

MIN_INTERVAL_S = 0.2
"""--watch never reads faster than this, whatever --interval says."""


@dataclasses.dataclass(frozen=True, slots=True)
class StatusRound:
    snapshot: FleetSnapshot
    """The processes the filters select (the whole fleet without filters)."""
    whole: FleetSnapshot
    excluded: tuple[tuple[str, int], ...]
    """Per filter, how many processes it left out."""
    notes: tuple[str, ...]
    """Where Sidekiq might be, when nothing is registered here."""


def read_status(
    stores: Sequence[FleetReader],
    *,
    filters: Filters,
    scope: str | None,
    allow_newer: bool = False,
    jobs: bool = False,
    default_url: str | None = None,
) -> StatusRound:
    """One round. Filters that leave nothing of a live fleet are a ``ConfigError``."""
    whole = read_fleet(stores, allow_newer=allow_newer, jobs=jobs, scope=scope)
    problem = unmatched_filters(whole.processes, filters)
    if problem is not None:
        raise ConfigError(problem)
    notes: list[str] = []
    if not any(p.alive for p in whole.processes):
        notes = empty_fleet_notes(stores, default_url=default_url)
    kept, excluded = filters.split(whole.processes)
    snapshot = dataclasses.replace(whole, processes=tuple(kept))
    return StatusRound(snapshot, whole, excluded, tuple(notes))


def rounds(
    read: Callable[[], T],
    show: Callable[[T], None],
    *,
    watch: bool,
    interval_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Read and show one round, or with ``watch`` one every ``interval_s`` until
    interrupted (KeyboardInterrupt goes to the caller). The cyclic GC is paused while a
    round is read and shown (its objects hold no cycles) and back on in between."""
    while True:
        with no_cycle_collection():
            result = read()
            show(result)
        if not watch:
            return result
        sleep(max(MIN_INTERVAL_S, interval_s))
