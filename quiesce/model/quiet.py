"""Which processes ``quiesce quiet`` signals, and why the others are left alone (pure)."""

from __future__ import annotations

import dataclasses
import enum

from quiesce.model.filters import Filters
from quiesce.model.fleet import ProcessRecord, ProcessState
from quiesce.model.record import DeployRecord
from quiesce.model.snapshot import FleetSnapshot


class Outcome(enum.StrEnum):
    CONFIRMED = "confirmed"
    ALREADY_QUIET = "already_quiet"
    VANISHED = "vanished"
    """Exited during the wait: fine for a deploy."""
    EMBEDDED = "embedded"
    """Skipped: Sidekiq ignores remote signals in embedded mode (7.0.3+)."""
    DEAD = "dead"
    """A leftover member of ``processes`` whose hash already expired: nothing to signal."""
    STALLED = "stalled"
    """Its own heartbeat is overdue (its version's interval plus a margin): hung or gone."""
    UNREADABLE = "unreadable"
    NOT_CONFIRMED = "not_confirmed"
    """Heartbeating, but the signal was not confirmed before the deadline."""
    SIGNAL_FAILED = "signal_failed"
    """Redis refused this process's push (e.g. its signal list is not a list)."""
    NOT_SIGNALLED = "not_signalled"
    """The push never went in (Redis unreachable until the deadline)."""
    LOST = "lost"
    """Left the registry with its hash (Redis lost its data, or the process died) and did
    not come back before the deadline: not a clean exit, so not counted as gone."""
    SIGNALLED = "signalled"
    """``--no-wait``: pushed, not checked."""
    PLANNED = "planned"
    """``--dry-run``: would be signalled."""
    PENDING = "pending"
    DRAINED = "drained"
    """``--until drained``: quiet, and no job running any more."""
    STILL_BUSY = "still_busy"
    """``--until drained``: took the signal, but jobs were still running at the deadline."""


FAILED_OUTCOMES = frozenset(
    {
        Outcome.STALLED,
        Outcome.UNREADABLE,
        Outcome.NOT_CONFIRMED,
        Outcome.SIGNAL_FAILED,
        Outcome.NOT_SIGNALLED,
        Outcome.LOST,
        Outcome.STILL_BUSY,
    }
)
"""Outcomes that make ``quiesce quiet`` exit non-zero (the process may still take jobs)."""


@dataclasses.dataclass(frozen=True, slots=True)
class QuietPlan:
    targets: tuple[ProcessRecord, ...]
    skipped: tuple[tuple[ProcessRecord, Outcome], ...]
    excluded: int
    """Processes the filters left out."""
    excluded_by: tuple[tuple[str, int], ...] = ()
    """Per filter (as its option), how many processes it left out, in option order."""


_SKIP_BY_STATE = {
    ProcessState.DEAD: Outcome.DEAD,
    ProcessState.UNREADABLE: Outcome.UNREADABLE,
    ProcessState.EMBEDDED: Outcome.EMBEDDED,
    ProcessState.QUIET: Outcome.ALREADY_QUIET,
}


def plan_quiet(snapshot: FleetSnapshot, filters: Filters) -> QuietPlan:
    targets: list[ProcessRecord] = []
    skipped: list[tuple[ProcessRecord, Outcome]] = []
    ordered = sorted(snapshot.processes, key=lambda p: (p.machine, p.pid or 0, p.identity))
    selected, by_filter = filters.split(ordered)
    for proc in selected:
        skip = _SKIP_BY_STATE.get(proc.state)
        if skip is None:
            targets.append(proc)  # running or stalled: push, then confirm or report it
        else:
            skipped.append((proc, skip))
    excluded = sum(n for _, n in by_filter)
    return QuietPlan(tuple(targets), tuple(skipped), excluded, by_filter)


_TARGETED = frozenset(
    {
        Outcome.CONFIRMED,
        Outcome.ALREADY_QUIET,
        Outcome.DRAINED,
        Outcome.SIGNALLED,
        Outcome.STILL_BUSY,
        Outcome.VANISHED,
        Outcome.NOT_CONFIRMED,
        Outcome.PENDING,
        Outcome.STALLED,
        Outcome.SIGNAL_FAILED,
        Outcome.NOT_SIGNALLED,
        Outcome.LOST,
    }
)
"""Outcomes of processes a deploy found live and meant to quiet."""


def live_targets(plan: QuietPlan) -> int:
    """The live processes of the scope this run is about: to signal, or already quiet."""
    return len(plan.targets) + sum(1 for _, o in plan.skipped if o is Outcome.ALREADY_QUIET)


def targeted(record: DeployRecord) -> int:
    """How many live processes a recorded deploy meant to quiet."""
    return sum(1 for e in record.outcomes.values() if e.outcome in _TARGETED)


def shrink_warning(previous: DeployRecord | None, live: int) -> str | None:
    """Far fewer live targets than the scope's previous deploy quieted (under half): said,
    not refused -- fleets autoscale between deploys (``--min-processes`` refuses)."""
    if previous is None:
        return None
    before = targeted(previous)
    if before == 0 or live * 2 >= before:
        return None
    return (
        f"only {live} live process{'es' if live != 1 else ''} to quiet, but the previous "
        f"deploy of this scope ({previous.deploy_id}) quieted {before}: is the target right "
        "(--namespace, database, filters)?"
    )
