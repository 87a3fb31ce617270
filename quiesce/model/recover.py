"""``quiesce recover``: get a fleet that a failed deploy left quiet processing jobs again.

Sidekiq's quiet cannot be undone (sidekiq#4336): the process has to be replaced. The
candidates (pure: ``stranded``; acting on them is ``runs.recover``) are Machines whose
every live process is quiet, quieted by the latest deploy for longer than ``--after``,
with no new process beside them. Only those are touched, one of two ways:

* ``--restart``: ``POST /machines/{id}/restart`` through the Fly API, one Machine at a
  time (``fly.RESTART_INTERVAL_S`` apart), only for Machines Fly lists in the app;
  a failure is reported and the next Machine is tried;
* ``--stop``: TERM through Sidekiq's signal list (``SidekiqStore.push_stop``, one MULTI
  per Redis server), so the process exits and its supervisor starts a new one.

Without ``--yes`` nothing is done: the report says what would be.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from quiesce.model.fleet import ProcessRecord, ProcessState
from quiesce.model.record import DeployRecord
from quiesce.model.rejoin import NO_FILTERS, RejoinFilters
from quiesce.model.snapshot import FleetSnapshot

DEFAULT_AFTER_S = 5 * 60.0
"""Longer than any deploy takes to start replacing Machines, shorter than an outage."""


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    machine: str
    identities: tuple[str, ...]
    redis: tuple[str, ...]
    """Per identity: the server label it registers in."""
    quiet_for_s: float


@dataclasses.dataclass(frozen=True, slots=True)
class RecoverReport:
    action: str
    """``restart``, ``stop`` or ``none`` (dry run without a chosen action)."""
    applied: bool
    candidates: tuple[Candidate, ...]
    results: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Machine -> ``restarted``, ``stopped``, ``skipped: ...`` or ``failed: ...``."""
    notes: tuple[str, ...] = ()

    @property
    def failures(self) -> tuple[str, ...]:
        return tuple(m for m, r in self.results.items() if not r.startswith(("restarted", "stop")))

    @property
    def ok(self) -> bool:
        return not self.failures

    def verb(self, machine: str) -> str:
        if self.applied:
            return self.results.get(machine, "not done")
        return {"restart": "would restart", "stop": "would stop"}.get(self.action, "stranded")


def _left_quiet(proc: ProcessRecord) -> bool:
    """Quiet, or quiet and no longer beating (hung or killed while quiet: stalled wins in
    its state, but a restart is still what it needs)."""
    return proc.state is ProcessState.QUIET or (
        proc.state is ProcessState.STALLED and proc.quiet and proc.problem is None
    )


def stranded(
    snapshot: FleetSnapshot,
    record: DeployRecord | None,
    *,
    after_s: float,
    filters: RejoinFilters = NO_FILTERS,
) -> tuple[list[Candidate], list[str]]:
    """Machines left quiet (see the module docstring), and notes on the ones not touched
    because the quiet cannot be dated (not quieted by a recorded deploy)."""
    notes: list[str] = []
    candidates = []
    for machine, procs in snapshot.by_machine().items():
        live = [p for p in procs if p.alive and filters.matches(p.hostname, p.tag)]
        if not live or not all(_left_quiet(p) for p in live):
            continue  # something on it still takes jobs (or cannot be read): leave it be
        since = [record.quiet_since(p.identity) if record else None for p in live]
        if any(s is None for s in since):
            notes.append(f"{machine}: quiet, but not by the latest recorded deploy; not touched")
            continue
        quiet_for = snapshot.taken_at - max(s for s in since if s is not None)
        if quiet_for < after_s:
            continue
        candidates.append(
            Candidate(
                machine,
                tuple(p.identity for p in live),
                tuple(p.redis for p in live),
                quiet_for,
            )
        )
    return candidates, notes
