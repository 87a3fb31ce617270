"""``quiesce recover``: get a fleet that a failed deploy left quiet processing jobs again.

Sidekiq's quiet cannot be undone (sidekiq#4336): the process has to be replaced, and
replacing acts on whole Machines, so the candidates (pure: ``stranded``; acting on them
is ``runs.recover``) are Machines on which *every* live process, whatever its tag and
whatever the filters select, is quiet and stranded: quiet since a recorded deploy of the
scope (any in its history: two failed deploys in a row strand processes quieted by the
first) for longer than ``--after``, and still beating. A Machine that also runs one
non-quiet process is working and never touched. With Fly's Machine list (read first),
a Machine is skipped, saying why, unless Fly lists it ``started`` and not already on the
deploy's release or image: starting, being replaced or updated, stopped, or not a
Machine of the app. Only candidates are touched, one of two ways:

* ``--restart``: ``POST /machines/{id}/restart`` through the Fly API, one Machine at a
  time (``fly.RESTART_INTERVAL_S`` apart), each Machine's state read again just before;
  a failure (a 409 lease held by a deploy, say) is one line and the next Machine is tried;
* ``--stop``: TERM through Sidekiq's signal list (``SidekiqStore.push_stop``, one MULTI
  per Redis server), so the process exits and its supervisor starts a new one.

Without ``--yes`` nothing is done: the report says what would be, with each Machine's
running jobs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from quiesce.model.filters import NO_FILTERS, Filters
from quiesce.model.fleet import ProcessRecord, ProcessState
from quiesce.model.ledger import quiet_since_any
from quiesce.model.machines import FlyMachine
from quiesce.model.record import DeployRecord
from quiesce.model.rejoin import NO_TARGET, Target
from quiesce.model.snapshot import FleetSnapshot
from quiesce.text import duration, plural

DEFAULT_AFTER_S = 5 * 60.0
"""Longer than any deploy takes to start replacing Machines, shorter than an outage."""

MAX_JOBS_LISTED = 5
"""Running jobs named per Machine in the plan (the rest are counted)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    machine: str
    identities: tuple[str, ...]
    redis: tuple[str, ...]
    """Per identity: the server label it registers in."""
    quiet_for_s: float
    jobs: tuple[str, ...] = ()
    """Its running jobs, as ``Class (queue, 1m02s)``, longest first, at most
    ``MAX_JOBS_LISTED`` (``busy`` counts them all)."""
    busy: int = 0
    deploy_id: str = ""
    """The deploy that quieted its processes (the most recent of them)."""


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
    its state). The second kind is not restarted (``_blocker`` says it stopped beating:
    a Machine may be mid-replacement), but it is not "working" either."""
    return proc.state is ProcessState.QUIET or (
        proc.state is ProcessState.STALLED and proc.quiet and proc.problem is None
    )


def stranded(
    snapshot: FleetSnapshot,
    history: Sequence[DeployRecord],
    *,
    after_s: float,
    filters: Filters = NO_FILTERS,
    machines: Sequence[FlyMachine] | None = None,
    target: Target = NO_TARGET,
) -> tuple[list[Candidate], list[str]]:
    """Machines left quiet (see the module docstring), and one note per Machine the
    filters select that is not touched for a reason worth saying. ``history``: the
    scope's records, newest first; ``machines``: Fly's list (None: not checked);
    ``target``: what the latest deploy put on the Machines (Machines already on it are
    left to ``rejoin``)."""
    notes: list[str] = []
    candidates = []
    fly = {m.id: m for m in machines} if machines is not None else None
    for machine, procs in snapshot.by_machine().items():
        live = [p for p in procs if p.alive]
        mine = [p for p in live if filters.selects(p)]
        if not mine or not any(_left_quiet(p) for p in mine):
            continue  # nothing selected on it is quiet: nothing to recover
        why, quiet_for, deploy_id = _blocker(live, mine, history, snapshot.taken_at, filters)
        if why is None and quiet_for < after_s:
            continue
        if why is None and fly is not None:
            why = _fly_blocker(fly.get(machine), target)
        if why is not None:
            notes.append(f"{machine}: {why}; not touched")
            continue
        jobs = sorted(
            (j for p in live if p.work is not None for j in p.work.jobs),
            key=lambda j: -(j.runtime_s or 0.0),
        )
        candidates.append(
            Candidate(
                machine,
                tuple(p.identity for p in live),
                tuple(p.redis for p in live),
                quiet_for,
                tuple(
                    f"{j.job_class} ({j.queue}, {duration(j.runtime_s)})"
                    for j in jobs[:MAX_JOBS_LISTED]
                ),
                sum(p.busy or 0 for p in live),
                deploy_id,
            )
        )
    return candidates, notes


def _blocker(
    live: Sequence[ProcessRecord],
    mine: Sequence[ProcessRecord],
    history: Sequence[DeployRecord],
    taken_at: float,
    filters: Filters,
) -> tuple[str | None, float, str]:
    """Why the Machine must not be touched (None: it may), how long it has been quiet
    (since its most recently quieted process), and by which deploy."""
    working = [p for p in live if not _left_quiet(p)]
    if working:
        outside = [p for p in working if p not in mine]
        shown = f" (tag {outside[0].tag or '-'})" if outside and filters.active else ""
        what = plural(len(working), "non-quiet process", "non-quiet processes")
        return f"it also runs {what}{shown}", 0.0, ""
    stalled = [p for p in live if p.is_stalled]
    if stalled:
        return f"{plural(len(stalled), 'process', 'processes')} stopped beating", 0.0, ""
    since: list[tuple[float, str]] = []
    for p in live:
        found = quiet_since_any(history, p.identity)
        if found is None:
            return "quiet, but not by a recorded deploy of this fleet", 0.0, ""
        record, at = found
        since.append((at, record.deploy_id))
    at, deploy_id = max(since)
    return None, taken_at - at, deploy_id


def _fly_blocker(machine: FlyMachine | None, target: Target) -> str | None:
    if machine is None:
        return "Fly does not list it (not a Machine of this app)"
    if machine.state != "started":
        return f"Fly lists it {machine.state or 'in no state'} (a deploy may be acting on it)"
    if target.known and target.matches(machine):
        return f"Fly lists it already on the deployed {target.describe()}"
    return None
