"""Which Machines came back after a deploy (pure: record + snapshot + Machines + now -> report).

The deploy record lists every process that was live when the release command quieted
the fleet; those processes' hostnames are the *expected* Machines (on Fly the hostname
Sidekiq reports is the Machine id). A Machine has *rejoined* when it hosts as many new
processes as it had old ones, a new process being live, readable, not quiet, not in the
record, and either carrying the new release label or started after the quiet.

Strategies:

* ``immediate`` (and rolling, canary): Machines keep their ids; the fleet is whole when
  every expected Machine rejoined (or Fly says it is stopped: flyctl leaves stopped
  Machines stopped), a Machine that Fly destroyed counting as back when a new Machine of
  its group took its place.
* ``bluegreen``: green Machines have new ids and the blue ones are destroyed at the end.
  The fleet is whole when each group (Fly process group, else the Sidekiq tag) has at
  least as many Machines back (rejoined or new) as it had before, whatever the blues do.

Clock skew: a process's ``started_at`` is on its Machine's clock, the record on Redis's.
Each process's offset is measured from its own last beat (``beat`` on its clock against
``taken_at - beat_age_s`` on Redis's), and its start moved onto the Redis clock before the
comparison, with ``SKEW_TOLERANCE_S`` to spare; a process whose offset cannot be measured
gets the wider ``UNMEASURED_SKEW_S``. A release label, when present, decides instead of
the clock: a live process carrying an *old* release label (an old process restarted by
its supervisor) is not a rejoin, whatever its start time.
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
from collections.abc import Iterable, Mapping, Sequence

from quiesce.model.fleet import ProcessRecord, ProcessState
from quiesce.model.machines import FlyMachine
from quiesce.model.record import DeployRecord, FleetEntry
from quiesce.model.snapshot import FleetSnapshot, is_quieting

SKEW_TOLERANCE_S = 2.0
"""Slack after the per-process clock correction (beat timing and rounding)."""

UNMEASURED_SKEW_S = 30.0
"""Slack when a process's clock offset cannot be measured (no beat age)."""

_SKIPPED = frozenset({"embedded", "dead", "unreadable"})
"""Record outcomes of processes the quiet left alone: their Machines are not waited for."""


class MachineState(enum.StrEnum):
    REJOINED = "rejoined"
    """As many new, running processes as it had before the deploy."""
    PARTIAL = "partial"
    """Some new processes, fewer than before (a swarm still booting)."""
    DRAINING = "draining"
    """An old process alive, quiet and still running jobs."""
    QUIET_IDLE = "quiet-idle"
    """An old process alive, quiet, running nothing: waiting to be replaced."""
    OLD_RUNNING = "old-running"
    """An old process alive and not quiet (nor quieting, ``fleet.is_quieting``): it still
    takes jobs with the old code."""
    PENDING = "pending"
    """No live process yet."""
    MISSING = "missing"
    """Still no new process at the deadline."""
    GONE = "gone"
    """Fly no longer lists it (destroyed: bluegreen's blue Machines, or replaced)."""
    NOT_EXPECTED = "not-expected"
    """Fly says it is stopped: flyctl updates stopped Machines without starting them."""
    NEW = "new"
    """Not in the record: bluegreen's green Machines, or a scale-up."""


BACK = frozenset({MachineState.REJOINED, MachineState.NEW})
WAITING = frozenset(
    {
        MachineState.PARTIAL,
        MachineState.DRAINING,
        MachineState.QUIET_IDLE,
        MachineState.OLD_RUNNING,
        MachineState.PENDING,
        MachineState.MISSING,
    }
)
NOT_BACK = WAITING | {MachineState.GONE}
"""What the report lists as not back: the waiting ones, and Machines Fly no longer lists."""


@dataclasses.dataclass(frozen=True, slots=True)
class RejoinFilters:
    """Processes of other apps in the same Redis are left out by tag or hostname glob."""

    tags: tuple[str, ...] = ()
    hostnames: tuple[str, ...] = ()
    exclude_tags: tuple[str, ...] = ()
    exclude_hostnames: tuple[str, ...] = ()

    def matches(self, hostname: str, tag: str) -> bool:
        if self.tags and tag not in self.tags:
            return False
        if tag in self.exclude_tags:
            return False
        if any(fnmatch.fnmatchcase(hostname, g) for g in self.exclude_hostnames):
            return False
        return not self.hostnames or any(fnmatch.fnmatchcase(hostname, g) for g in self.hostnames)


NO_FILTERS = RejoinFilters()


@dataclasses.dataclass(frozen=True, slots=True)
class MachineRejoin:
    machine: str
    state: MachineState
    group: str
    expected: bool
    old_processes: int
    """Processes it hosted when the fleet was quieted (0 for a new Machine)."""
    new_processes: int
    """New, running processes now."""
    busy: int = 0
    """Jobs its old, quiet processes are still running."""
    quiet_at: float | None = None
    """When this deploy confirmed its processes quiet (Redis clock), the earliest."""
    rejoined_at: float | None = None
    """When its last needed new process started (Redis clock, skew-corrected)."""
    fly_state: str | None = None
    region: str = ""
    release_version: str = ""
    process_group: str = ""

    @property
    def paused_s(self) -> float | None:
        """From the quiet confirmation to the new process: how long it took no jobs."""
        if self.quiet_at is None or self.rejoined_at is None:
            return None
        return max(0.0, self.rejoined_at - self.quiet_at)


@dataclasses.dataclass(frozen=True, slots=True)
class GroupCount:
    group: str
    expected: int
    """Expected Machines, stopped ones (not-expected) left out."""
    back: int
    """Rejoined expected Machines plus new ones."""
    not_expected: int = 0

    @property
    def whole(self) -> bool:
        return self.back >= self.expected


@dataclasses.dataclass(frozen=True, slots=True)
class RejoinReport:
    deploy_id: str
    release: str | None
    strategy: str
    quiet_at: float
    """The record's start (Redis clock)."""
    now: float
    machines: tuple[MachineRejoin, ...]
    groups: tuple[GroupCount, ...]
    whole: bool
    with_fly: bool
    notes: tuple[str, ...] = ()
    deadline: float | None = None

    @property
    def since_quiet_s(self) -> float:
        return max(0.0, self.now - self.quiet_at)

    def counts(self) -> dict[MachineState, int]:
        out = dict.fromkeys(MachineState, 0)
        for m in self.machines:
            out[m.state] += 1
        return out

    @property
    def not_back(self) -> tuple[MachineRejoin, ...]:
        return tuple(m for m in self.machines if m.state in NOT_BACK)

    @property
    def expected(self) -> int:
        return sum(g.expected for g in self.groups)

    @property
    def back(self) -> int:
        return sum(min(g.back, g.expected) for g in self.groups)

    def _rejoins(self) -> list[MachineRejoin]:
        return [m for m in self.machines if m.state in BACK and m.rejoined_at is not None]

    @property
    def first_rejoin_s(self) -> float | None:
        times = [m.rejoined_at for m in self._rejoins() if m.rejoined_at is not None]
        return max(0.0, min(times) - self.quiet_at) if times else None

    @property
    def last_rejoin_s(self) -> float | None:
        times = [m.rejoined_at for m in self._rejoins() if m.rejoined_at is not None]
        return max(0.0, max(times) - self.quiet_at) if times else None

    @property
    def longest_pause(self) -> MachineRejoin | None:
        paused = [m for m in self.machines if m.paused_s is not None]
        return max(paused, key=lambda m: m.paused_s or 0.0, default=None)


# -- the model -------------------------------------------------------------------------


def clock_offset(proc: ProcessRecord, taken_at: float) -> float | None:
    """The process's clock minus Redis's, from its last beat; None when unmeasurable."""
    if proc.beat is None or proc.beat_age_s is None:
        return None
    return proc.beat - (taken_at - proc.beat_age_s)


def release_label(labels: Iterable[str]) -> str | None:
    """The release a process says it runs: a ``release:<x>`` label, else a label that is an
    image reference (``FLY_IMAGE_REF``, ``registry.fly.io/app:deployment-...``)."""
    labels = list(labels)
    for label in labels:
        if label.startswith("release:"):
            return label.removeprefix("release:")
    for label in labels:
        if "/" in label and ":" in label.rsplit("/", 1)[-1]:
            return label
    return None


def _same_release(a: str, b: str) -> bool:
    """Equal, or the same image tag (one side may omit the registry)."""
    return a == b or (":" in a and ":" in b and a.rsplit(":", 1)[-1] == b.rsplit(":", 1)[-1])


def is_new_process(
    proc: ProcessRecord,
    record: DeployRecord,
    old: frozenset[str],
    taken_at: float,
    release: str | None,
) -> bool:
    """A live, readable, running process of the new deploy (see the module docstring)."""
    if proc.identity in old or proc.state not in (ProcessState.RUNNING, ProcessState.QUIETING):
        return False
    label = release_label(proc.labels)
    if label is not None and release:
        return _same_release(label, release)
    if proc.started_at is None:
        return True  # not in the record and live now: it started after the quiet
    offset = clock_offset(proc, taken_at)
    if offset is None:
        return proc.started_at >= record.started_at - UNMEASURED_SKEW_S
    return proc.started_at - offset >= record.started_at - SKEW_TOLERANCE_S


def _start_on_redis_clock(proc: ProcessRecord, taken_at: float) -> float | None:
    if proc.started_at is None:
        return None
    offset = clock_offset(proc, taken_at)
    return proc.started_at - (offset or 0.0)


@dataclasses.dataclass(slots=True)
class _Host:
    old: list[FleetEntry] = dataclasses.field(default_factory=list)
    live_old: list[ProcessRecord] = dataclasses.field(default_factory=list)
    new: list[ProcessRecord] = dataclasses.field(default_factory=list)
    tag: str = ""


def rejoin_report(
    record: DeployRecord,
    snapshot: FleetSnapshot,
    machines: Sequence[FlyMachine] | None = None,
    *,
    now: float | None = None,
    deadline: float | None = None,
    filters: RejoinFilters = NO_FILTERS,
    release: str | None = None,
    notes: Sequence[str] = (),
) -> RejoinReport:
    """The report for ``record`` as of ``snapshot`` (and Fly's ``machines`` if known).

    ``now`` defaults to the snapshot's Redis time. A Machine still without a new process
    once ``now >= deadline`` is *missing*. ``release`` overrides the record's release
    label. ``machines=None``: heartbeats alone.
    """
    now = snapshot.taken_at if now is None else now
    release = release or record.release
    expected_ids = {
        e.identity
        for e in record.fleet
        if record.outcomes.get(e.identity) is None
        or record.outcomes[e.identity].outcome not in _SKIPPED
    }
    old = frozenset(e.identity for e in record.fleet)
    hosts: dict[str, _Host] = {}
    for entry in record.fleet:
        if entry.identity in expected_ids and filters.matches(entry.hostname, entry.tag):
            host = hosts.setdefault(entry.hostname, _Host(tag=entry.tag))
            host.old.append(entry)
    fly = {m.id: m for m in machines} if machines is not None else None
    for proc in snapshot.processes:
        if not proc.alive or not filters.matches(proc.hostname, proc.tag):
            continue
        if is_new_process(proc, record, old, snapshot.taken_at, release):
            if proc.hostname not in hosts and fly is not None and proc.hostname not in fly:
                continue  # not a Machine of this app: another app sharing the Redis
            hosts.setdefault(proc.hostname, _Host(tag=proc.tag)).new.append(proc)
        elif proc.identity in old and proc.hostname in hosts:
            # Popped quiesce's TSTP but not yet reporting quiet (one beat): quiet already.
            quieting = proc.quieting or is_quieting(proc, record, snapshot.taken_at)
            if quieting != proc.quieting:
                proc = dataclasses.replace(proc, quieting=quieting)
            hosts[proc.hostname].live_old.append(proc)
    tag_groups = _tag_groups(hosts, fly)
    rows = [
        _machine(name, host, record, snapshot.taken_at, now, deadline, fly, tag_groups)
        for name, host in sorted(hosts.items())
    ]
    groups = _groups(rows, record.strategy)
    whole = all(g.whole for g in groups) and _per_machine_whole(rows, groups, record.strategy)
    out_notes = list(notes)
    if fly is None:
        out_notes.append("no Fly Machine list: rejoin judged from Sidekiq heartbeats alone")
    return RejoinReport(
        deploy_id=record.deploy_id,
        release=release,
        strategy=record.strategy,
        quiet_at=record.started_at,
        now=now,
        machines=tuple(rows),
        groups=groups,
        whole=whole,
        with_fly=fly is not None,
        notes=tuple(out_notes),
        deadline=deadline,
    )


def _tag_groups(hosts: Mapping[str, _Host], fly: Mapping[str, FlyMachine] | None) -> dict[str, str]:
    """Sidekiq tag -> Fly process group, learned from Machines Fly still lists, so a blue
    Machine Fly has destroyed is counted in the same group as its green replacement."""
    out: dict[str, str] = {}
    if fly is None:
        return out
    for name, host in hosts.items():
        machine = fly.get(name)
        if machine is not None and machine.process_group and host.tag:
            out.setdefault(host.tag, machine.process_group)
    return out


def _machine(
    name: str,
    host: _Host,
    record: DeployRecord,
    taken_at: float,
    now: float,
    deadline: float | None,
    fly: Mapping[str, FlyMachine] | None,
    tag_groups: Mapping[str, str],
) -> MachineRejoin:
    machine = fly.get(name) if fly is not None else None
    group = (machine.process_group if machine else "") or tag_groups.get(host.tag) or host.tag
    quiet_times = [
        t
        for e in host.old
        if (t := record.quiet_since(e.identity)) is not None
        or (t := _pushed(record, e.identity)) is not None
    ]
    starts = sorted(s for p in host.new if (s := _start_on_redis_clock(p, taken_at)) is not None)
    need = max(1, len(host.old))
    rejoined_at = starts[need - 1] if len(starts) >= need else (starts[-1] if starts else None)
    state = _state(host, machine, fly is not None, now, deadline)
    return MachineRejoin(
        machine=name,
        state=state,
        group=group or "-",
        expected=bool(host.old),
        old_processes=len(host.old),
        new_processes=len(host.new),
        busy=sum(p.busy or 0 for p in host.live_old if p.quiet or p.quieting),
        quiet_at=min(quiet_times) if quiet_times else (record.started_at if host.old else None),
        rejoined_at=rejoined_at if state in BACK else None,
        fly_state=machine.state if machine else None,
        region=machine.region if machine else "",
        release_version=machine.release_version if machine else "",
        process_group=machine.process_group if machine else "",
    )


def _pushed(record: DeployRecord, identity: str) -> float | None:
    entry = record.outcomes.get(identity)
    return entry.pushed_at if entry is not None else None


def _state(
    host: _Host,
    machine: FlyMachine | None,
    with_fly: bool,
    now: float,
    deadline: float | None,
) -> MachineState:
    if not host.old:
        return MachineState.NEW
    if len(host.new) >= len(host.old):
        return MachineState.REJOINED
    if host.new:
        state = MachineState.PARTIAL
    elif any(not (p.quiet or p.quieting) for p in host.live_old):
        state = MachineState.OLD_RUNNING
    elif any((p.busy or 0) > 0 for p in host.live_old):
        state = MachineState.DRAINING
    elif host.live_old:
        state = MachineState.QUIET_IDLE
    elif with_fly and (machine is None or machine.gone):
        return MachineState.GONE
    elif machine is not None and machine.stopped:
        return MachineState.NOT_EXPECTED
    else:
        state = MachineState.PENDING
    if deadline is not None and now >= deadline and state is not MachineState.DRAINING:
        return MachineState.MISSING
    return state


def _groups(rows: Sequence[MachineRejoin], strategy: str) -> tuple[GroupCount, ...]:
    counts: dict[str, list[int]] = {}
    for row in rows:
        expected, back, not_expected = counts.setdefault(row.group, [0, 0, 0])
        if row.state is MachineState.NOT_EXPECTED:
            not_expected += 1
        elif row.expected:
            expected += 1
        if row.state in BACK:
            back += 1
        counts[row.group] = [expected, back, not_expected]
    return tuple(GroupCount(g, e, b, n) for g, (e, b, n) in sorted(counts.items()))


def _per_machine_whole(
    rows: Sequence[MachineRejoin], groups: Sequence[GroupCount], strategy: str
) -> bool:
    """Beyond the counts, for in-place strategies: every expected Machine is back, or
    stopped, or gone with a new Machine of its group in its place."""
    if strategy == "bluegreen":
        return True
    spare = {g.group: sum(1 for r in rows if r.group == g.group and r.state is MachineState.NEW)
             for g in groups}  # fmt: skip
    for row in rows:
        if row.state in WAITING:
            return False
        if row.state is MachineState.GONE:
            if spare.get(row.group, 0) <= 0:
                return False
            spare[row.group] -= 1
    return True


def snapshot_rejoin(
    snapshot: FleetSnapshot,
    machines: Sequence[FlyMachine] | None = None,
    *,
    filters: RejoinFilters = NO_FILTERS,
) -> RejoinReport | None:
    """The rejoin report for the snapshot's latest deploy record, if there is one: the
    hook ``quiesce status`` and the metrics exporter call (no I/O)."""
    if snapshot.latest_deploy is None:
        return None
    return rejoin_report(snapshot.latest_deploy, snapshot, machines, filters=filters)
