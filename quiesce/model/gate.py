"""``quiesce status --expect``: is the fleet in the state a deploy script waits for? (pure)

Only live processes count (a dead member of ``processes`` runs nothing) and embedded
ones never do (they ignore signals: their host quiets them). ``quiet`` accepts
``quieting`` too: ``quiesce quiet`` confirms delivery one beat before Sidekiq writes
``quiet = "true"``, and quiet is irreversible, so ``quiesce quiet && quiesce status
--expect quiet`` holds at once.
"""

from __future__ import annotations

import dataclasses

from quiesce.model.decode import printable
from quiesce.model.fleet import ProcessState
from quiesce.model.snapshot import FleetSnapshot

SHOWN = 5
"""Offending processes named in the message; the rest are counted."""

ACCEPTED = {
    "running": frozenset({ProcessState.RUNNING}),
    "quiet": frozenset({ProcessState.QUIET, ProcessState.QUIETING}),
}


@dataclasses.dataclass(frozen=True, slots=True)
class ExpectResult:
    ok: bool
    expect: str
    message: str
    """One line: what was found, naming up to ``SHOWN`` offending processes."""
    live: int
    """Live, non-embedded processes: the ones the expectation is about."""
    counts: dict[ProcessState, int]
    """Their states (states with no process are left out)."""
    offending: tuple[tuple[str, ProcessState], ...]
    """Every live process not in an accepted state: ``(identity, state)``."""


def check_expect(snapshot: FleetSnapshot, expect: str, min_live: int = 1) -> ExpectResult:
    """``expect`` is ``"running"`` (also needs ``min_live`` live processes) or ``"quiet"``
    (a fleet with no live process is quiet, and the message says so)."""
    if expect not in ACCEPTED:
        raise ValueError(f"expect must be 'running' or 'quiet', not {expect!r}")
    accepted = ACCEPTED[expect]
    live = [p for p in snapshot.processes if p.alive and p.state is not ProcessState.EMBEDDED]
    counts: dict[ProcessState, int] = {}
    for proc in live:
        counts[proc.state] = counts.get(proc.state, 0) + 1
    offending = tuple((p.identity, p.state) for p in live if p.state not in accepted)

    def result(ok: bool, message: str) -> ExpectResult:
        return ExpectResult(ok, expect, message, len(live), counts, offending)

    if offending:
        shown = ", ".join(f"{printable(i)} ({s.value})" for i, s in offending[:SHOWN])
        more = f" and {len(offending) - SHOWN} more" if len(offending) > SHOWN else ""
        return result(
            False, f"{len(offending)} of {len(live)} live processes not {expect}: {shown}{more}"
        )
    if expect == "running" and len(live) < min_live:
        return result(False, f"{len(live)} live processes running, expected at least {min_live}")
    if not live:
        return result(True, "no live processes: nothing is running, so the fleet is quiet")
    quieting = counts.get(ProcessState.QUIETING, 0)
    detail = f" ({quieting} quieting: quiet from their next beat)" if quieting else ""
    return result(True, f"all {len(live)} live processes {expect}{detail}")
