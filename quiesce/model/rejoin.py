"""Which Machines came back after a deploy (pure: record + snapshot + Machines + now -> report).

The one story: ``quiesce rejoin``, ``status``, the exporter and ``recover`` all judge a
Machine here, so they cannot disagree.

*Expected* Machines: the hostnames of the processes live when the release command
quieted the fleet (the deploy record's fleet; on Fly the hostname Sidekiq reports is the
Machine id), minus those whose processes the quiet left alone (embedded, dead, unreadable).

*A new process* and *a counted process* follow the one rule of
``quiesce.model.generation`` (also the exporter's ``generation`` label): not in the
record, started after the quiet (skew-corrected, no slack), the deployed release label
if it carries one, and kept beating for a heartbeat interval to count. A live process
not in the record that is not new makes its Machine ``old-running``.

*A Machine is back* when it hosts as many counted new processes as it had old ones,
and, when Fly's Machine list is known, Fly shows it ``started`` on the deployed release or
image (the record's target, else the newest release Fly lists, said in a note). Without
Fly the image cannot be verified: the report says so and rests on heartbeats and labels.

Groups are Fly process groups: old Machines as recorded at the quiet, new ones from
Fly's list; the Sidekiq tag only when Fly never told us (said in a note). An expected
Machine that is gone (Fly no longer lists it, or lists it destroyed/replaced; without Fly:
no process at all) is ``replaced`` when a new Machine of its group fills its slot:
bluegreen's greens, or an immediate deploy that gave a Machine a new id. With bluegreen a
quiet blue Machine is replaced the same way (flyctl destroys it next).

Never back: ``old-image`` (Fly lists it started on another release or image: a reverted
update), ``stopped`` (it ran Sidekiq at the quiet and Fly says it is stopped: flyctl's
retries can leave updated Machines stopped; ``stopped_ok`` makes it ``not-expected``),
``conflict`` (a live process claims a Machine id that Fly lists stopped or gone, or not at
all: the hostname is not that Machine's). An old-image or conflict row makes the fleet
not whole even on a Machine that was not expected: it runs code or claims an identity
the deploy did not put there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from quiesce.model.filters import NO_FILTERS, Filters, unmatched_filters
from quiesce.model.fleet import ProcessRecord, ProcessState
from quiesce.model.generation import (
    KEPT_BEATING_SLACK_S,
    clock_offset,
    is_new_process,
    kept_beating,
    process_generation,
    release_label,
    same_image,
    start_on_redis_clock,
)
from quiesce.model.machine_states import (
    BACK,
    BROKEN,
    NO_TARGET,
    NOT_BACK,
    SETTLED,
    WAITING,
    GroupCount,
    MachineRejoin,
    MachineState,
    RejoinReport,
    Target,
)
from quiesce.model.machines import FlyMachine
from quiesce.model.record import DeployRecord, DeployState
from quiesce.model.record_entries import FleetEntry
from quiesce.model.snapshot import FleetSnapshot, is_quieting

__all__ = [
    "BACK",
    "BROKEN",
    "KEPT_BEATING_SLACK_S",
    "NOT_BACK",
    "NO_TARGET",
    "SETTLED",
    "WAITING",
    "GroupCount",
    "MachineRejoin",
    "MachineState",
    "RejoinReport",
    "Target",
    "clock_offset",
    "deploy_target",
    "filters_problem",
    "is_new_process",
    "kept_beating",
    "process_generation",
    "rejoin_report",
    "release_label",
    "same_image",
    "snapshot_rejoin",
    "start_on_redis_clock",
]

_SKIPPED = frozenset({"embedded", "dead", "unreadable"})
"""Record outcomes of processes the quiet left alone: their Machines are not waited for."""

_UP = "started"


def filters_problem(
    filters: Filters, snapshot: FleetSnapshot, record: DeployRecord | None
) -> str | None:
    """Filters that select nothing, neither in the record nor live, are a typo: the line
    ``quiet`` fails with too (``quiet.unmatched_filters``), else None."""
    if not filters.active:
        return None
    if record is not None and any(
        filters.admits(e.hostname, e.tag, e.labels) for e in record.fleet
    ):
        return None
    return unmatched_filters(snapshot.processes, filters)


# -- the report --------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _Host:
    old: list[FleetEntry] = dataclasses.field(default_factory=list)
    live_old: list[ProcessRecord] = dataclasses.field(default_factory=list)
    new: list[ProcessRecord] = dataclasses.field(default_factory=list)
    """New processes (counted or still starting)."""
    other: list[ProcessRecord] = dataclasses.field(default_factory=list)
    """Live, not quiet, neither old nor new: restarted before the quiet's start, or
    labelled with another release (old code)."""
    tag: str = ""


def deploy_target(
    record: DeployRecord, machines: Sequence[FlyMachine] | None, release: str | None = None
) -> tuple[Target, list[str]]:
    """The record's target; else the newest release Fly lists (said); else an image
    reference given as the release label."""
    target = record.target
    if target is not None and (target.release_version or target.image_ref):
        return Target(target.release_version or "", target.image_ref, "record"), []
    notes: list[str] = []
    if machines:
        newest = max(machines, key=lambda m: _release_number(m.release_version), default=None)
        if newest is not None and newest.release_version:
            notes.append(
                f"the deploy record has no Fly target: judged against the newest release "
                f"Fly lists ({newest.release_version})"
            )
            return Target(newest.release_version, newest.image_ref, "fly-newest"), notes
    label = release or record.release
    if label and "/" in label:
        return Target(image_ref=label, source="label"), notes
    return Target(), notes


def _release_number(version: str) -> int:
    return int(version) if version.isdigit() else -1


def rejoin_report(
    record: DeployRecord,
    snapshot: FleetSnapshot,
    machines: Sequence[FlyMachine] | None = None,
    *,
    now: float | None = None,
    deadline: float | None = None,
    filters: Filters = NO_FILTERS,
    release: str | None = None,
    notes: Sequence[str] = (),
    stopped_ok: bool = False,
    process_group: str | None = None,
) -> RejoinReport:
    """The report for ``record`` as of ``snapshot`` (and Fly's ``machines`` if known).

    ``now`` defaults to the snapshot's Redis time. A Machine still not back once
    ``now >= deadline`` is *missing*. ``release`` overrides the record's release label.
    ``machines=None``: heartbeats alone. ``stopped_ok``: Machines Fly shows stopped are
    not expected back. ``process_group``: only Machines of that Fly process group (the
    Machine list was asked for that group alone).
    """
    now = snapshot.taken_at if now is None else now
    release = release or record.release
    fly = {m.id: m for m in machines} if machines is not None else None
    hosts = _hosts(record, snapshot, fly, filters, release)
    target, target_notes = deploy_target(record, machines, release)
    groups_of, by_tag = _groups_of(hosts, record, fly)
    if process_group:
        hosts = {n: h for n, h in hosts.items() if groups_of[n] == process_group}
    judged = [
        _machine(name, host, record, snapshot.taken_at, fly, target, groups_of[name], stopped_ok)
        for name, host in sorted(hosts.items())
    ]
    filled = _fill_slots([r for r in judged if r is not None], record.strategy, fly is not None)
    rows = [_at_deadline(r, now, deadline) for r in filled]
    groups = _count_groups(rows)
    whole = all(
        (r.state in SETTLED) if r.expected else (r.state not in BROKEN) for r in rows
    ) and all(g.whole for g in groups)
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
        notes=(
            *notes,
            *target_notes,
            *_notes(record, fly is not None, target, by_tag),
            *_unverified(rows, fly, target),
        ),
        deadline=deadline,
        target=target,
        grouped_by="tag" if by_tag else "fly",
    )


def _hosts(
    record: DeployRecord,
    snapshot: FleetSnapshot,
    fly: Mapping[str, FlyMachine] | None,
    filters: Filters,
    release: str | None,
) -> dict[str, _Host]:
    """Machine -> its processes: old ones from the record and live, new and other live
    ones; a Machine not in the record only when it hosts a new process (and Fly lists
    it, when Fly is known: otherwise it is another app's sharing the Redis)."""
    expected_ids = {
        e.identity
        for e in record.fleet
        if record.outcomes.get(e.identity) is None
        or record.outcomes[e.identity].outcome not in _SKIPPED
    }
    old = frozenset(e.identity for e in record.fleet)
    hosts: dict[str, _Host] = {}
    for entry in record.fleet:
        if entry.identity in expected_ids and filters.admits(
            entry.hostname, entry.tag, entry.labels
        ):
            hosts.setdefault(entry.hostname, _Host(tag=entry.tag)).old.append(entry)
    for proc in snapshot.processes:
        if not proc.alive or not filters.selects(proc):
            continue
        if proc.identity in old:
            if proc.hostname in hosts:
                # Popped quiesce's TSTP but not yet reporting quiet (one beat): quiet already.
                quieting = proc.quieting or is_quieting(proc, record, snapshot.taken_at)
                if quieting != proc.quieting:
                    proc = dataclasses.replace(proc, quieting=quieting)
                hosts[proc.hostname].live_old.append(proc)
            continue
        if proc.state is not ProcessState.RUNNING:
            continue
        is_new = _is_new(proc, record, old, snapshot, release)
        if proc.hostname in hosts:
            host = hosts[proc.hostname]
            (host.new if is_new else host.other).append(proc)
        elif is_new and (fly is None or proc.hostname in fly):
            # Fly does not list it: another app's process sharing the Redis.
            hosts[proc.hostname] = _Host(new=[proc], tag=proc.tag)
    return hosts


def _unverified(
    rows: Sequence[MachineRejoin], fly: Mapping[str, FlyMachine] | None, target: Target
) -> list[str]:
    """Machines counted back although Fly shows neither their release nor their image."""
    if fly is None or not target.known:
        return []
    blind = [
        r.machine
        for r in rows
        if r.state in BACK and (m := fly.get(r.machine)) is not None and target.matches(m) is None
    ]
    if not blind:
        return []
    shown = ", ".join(blind[:5]) + (f" (+{len(blind) - 5} more)" if len(blind) > 5 else "")
    return [f"Fly shows no release or image for {shown}: counted back on heartbeats alone"]


def _notes(record: DeployRecord, with_fly: bool, target: Target, by_tag: str) -> list[str]:
    out = []
    if not with_fly:
        out.append(
            "no Fly Machine list: the image each Machine runs is not verified; judged "
            "from Sidekiq heartbeats and release labels alone"
        )
    elif not target.known:
        out.append("the deployed release is unknown: the Machines' images are not compared")
    if by_tag:
        out.append(f"Fly process group unknown for {by_tag} Machines: grouped by Sidekiq tag")
    if record.state is DeployState.FAILED:
        out.append(f"the quiet of this deploy failed: {record.failure or 'no reason'}")
    return out


def _is_new(
    proc: ProcessRecord,
    record: DeployRecord,
    old: frozenset[str],
    snapshot: FleetSnapshot,
    release: str | None,
) -> bool:
    return process_generation(proc, record, old, snapshot.taken_at, release) == "new"


def _groups_of(
    hosts: Mapping[str, _Host], record: DeployRecord, fly: Mapping[str, FlyMachine] | None
) -> tuple[dict[str, str], str]:
    """Machine -> group: as recorded at the quiet, else as Fly lists it now, else through
    the Sidekiq tag of Machines whose group is known, else the tag itself (and how many
    were grouped that way, ``""`` for none)."""
    known: dict[str, str] = {}
    for name in hosts:
        entry = record.machines.get(name)
        listed = fly.get(name) if fly is not None else None
        group = (entry.process_group if entry is not None else "") or (
            listed.process_group if listed is not None else ""
        )
        if group:
            known[name] = group
    by_tag: dict[str, str] = {}
    for name, group in sorted(known.items()):
        by_tag.setdefault(hosts[name].tag, group)
    out, guessed = {}, 0
    for name, host in hosts.items():
        if name in known:
            out[name] = known[name]
        elif host.tag in by_tag:
            out[name] = by_tag[host.tag]
        else:
            out[name] = host.tag or "-"
            guessed += 1
    return out, (f"{guessed} of {len(hosts)}" if guessed else "")


def _machine(
    name: str,
    host: _Host,
    record: DeployRecord,
    taken_at: float,
    fly: Mapping[str, FlyMachine] | None,
    target: Target,
    group: str,
    stopped_ok: bool,
) -> MachineRejoin | None:
    machine = fly.get(name) if fly is not None else None
    counted = [p for p in host.new if kept_beating(p)]
    recorded = record.machines.get(name)
    was = recorded.process_group if recorded is not None else ""
    state, why = _state(host, counted, machine, fly is not None, target, stopped_ok, was)
    if state is None:
        return None
    quiet_times = [
        t
        for e in host.old
        if (t := record.quiet_since(e.identity)) is not None
        or (t := _pushed(record, e.identity)) is not None
    ]
    starts = sorted(s for p in counted if (s := start_on_redis_clock(p, taken_at)) is not None)
    need = max(1, len(host.old))
    rejoined_at = starts[need - 1] if len(starts) >= need else (starts[-1] if starts else None)
    return MachineRejoin(
        machine=name,
        state=state,
        group=group,
        expected=bool(host.old),
        old_processes=len(host.old),
        new_processes=len(counted),
        busy=sum(p.busy or 0 for p in host.live_old if p.quiet or p.quieting),
        quiet_at=min(quiet_times) if quiet_times else (record.started_at if host.old else None),
        rejoined_at=rejoined_at if state in BACK else None,
        fly_state=machine.state if machine else None,
        region=machine.region if machine else "",
        release_version=machine.release_version if machine else "",
        process_group=machine.process_group if machine else "",
        image_ref=machine.image_ref if machine else "",
        why=why,
    )


def _pushed(record: DeployRecord, identity: str) -> float | None:
    entry = record.outcomes.get(identity)
    return entry.pushed_at if entry is not None else None


def _state(
    host: _Host,
    counted: Sequence[ProcessRecord],
    machine: FlyMachine | None,
    with_fly: bool,
    target: Target,
    stopped_ok: bool,
    recorded_group: str = "",
) -> tuple[MachineState | None, str]:
    """The Machine's state and, for the broken ones, why (None: not a Machine to report).
    ``recorded_group``: its Fly process group at the quiet, if the record has it."""
    if with_fly:
        judged = _fly_state(host, machine, target, stopped_ok, recorded_group)
        if judged is not None:
            return judged
    if not host.old:
        if counted:
            return MachineState.NEW, ""
        return (MachineState.STARTING, "") if host.new else (None, "")
    return _heartbeat_state(host, counted, _up(machine, with_fly)), ""


def _fly_state(
    host: _Host, machine: FlyMachine | None, target: Target, stopped_ok: bool, recorded_group: str
) -> tuple[MachineState | None, str] | None:
    """What Fly's view alone decides (None: the heartbeats decide)."""
    fresh = bool(host.new or host.other)
    if (
        fresh
        and machine is not None
        and recorded_group
        and machine.process_group
        and machine.process_group != recorded_group
    ):
        # A Machine keeps its group for life: the process's hostname is not this Machine.
        return MachineState.CONFLICT, (
            f"a live process claims it; Fly lists it in group {machine.process_group}, "
            f"it was in {recorded_group} at the quiet"
        )
    if machine is None or machine.gone:
        if fresh:
            listed = "lists it " + machine.state if machine else "does not list it"
            return MachineState.CONFLICT, f"a live process claims it; Fly {listed}"
        if not host.old:
            return None, ""
        return (MachineState.GONE, "") if not host.live_old else None
    if machine.stopped:
        if fresh:
            return MachineState.CONFLICT, f"a live process claims it; Fly lists it {machine.state}"
        if not host.old or host.live_old:
            return None
        if stopped_ok:
            return MachineState.NOT_EXPECTED, ""
        return MachineState.STOPPED, f"ran Sidekiq at the quiet; Fly lists it {machine.state}"
    if machine.state == _UP and target.matches(machine) is False:
        if fresh or not host.live_old:
            why = f"Fly lists it on {_on(machine)}, the deploy is {target.describe()}"
            return (MachineState.OLD_IMAGE, why) if (fresh or host.old) else (None, "")
        if any(not (p.quiet or p.quieting) for p in host.live_old):
            return MachineState.OLD_RUNNING, ""
    return None


def _heartbeat_state(host: _Host, counted: Sequence[ProcessRecord], up: bool) -> MachineState:
    if host.other or any(not (p.quiet or p.quieting) for p in host.live_old):
        # Taking jobs and not new: started before the quiet without being quieted, or
        # labelled with another release. Old code, whatever else runs beside it.
        return MachineState.OLD_RUNNING
    if len(counted) >= len(host.old) and up:
        return MachineState.REJOINED
    if counted and up:
        return MachineState.PARTIAL
    if host.new:
        return MachineState.STARTING
    if any((p.busy or 0) > 0 for p in host.live_old):
        return MachineState.DRAINING
    if host.live_old:
        return MachineState.QUIET_IDLE
    return MachineState.PENDING


def _up(machine: FlyMachine | None, with_fly: bool) -> bool:
    return not with_fly or (machine is not None and machine.state == _UP)


def _on(machine: FlyMachine) -> str:
    if machine.release_version:
        return f"release {machine.release_version}"
    return f"image {machine.image_ref}" if machine.image_ref else "an unknown release"


_FILLABLE = frozenset({MachineState.GONE, MachineState.PENDING})
_FILLABLE_BLUEGREEN = _FILLABLE | {MachineState.QUIET_IDLE, MachineState.DRAINING}


def _fill_slots(
    rows: Sequence[MachineRejoin], strategy: str, with_fly: bool
) -> list[MachineRejoin]:
    """Expected Machines that are gone take the new Machines of their group as their
    replacements, one each (see the module docstring)."""
    spare: dict[str, int] = {}
    for row in rows:
        if row.state is MachineState.NEW:
            spare[row.group] = spare.get(row.group, 0) + 1
    fillable = _FILLABLE_BLUEGREEN if strategy == "bluegreen" else _FILLABLE
    out = []
    for row in rows:
        if (
            row.expected
            and row.state in fillable
            and spare.get(row.group, 0) > 0
            and not (with_fly and row.state is MachineState.PENDING and row.fly_state == _UP)
        ):
            spare[row.group] -= 1
            row = dataclasses.replace(row, state=MachineState.REPLACED)
        out.append(row)
    return out


_MISSABLE = WAITING - {MachineState.DRAINING}


def _at_deadline(row: MachineRejoin, now: float, deadline: float | None) -> MachineRejoin:
    if deadline is not None and now >= deadline and row.state in _MISSABLE:
        return dataclasses.replace(row, state=MachineState.MISSING)
    return row


def _count_groups(rows: Sequence[MachineRejoin]) -> tuple[GroupCount, ...]:
    counts: dict[str, list[int]] = {}
    for row in rows:
        c = counts.setdefault(row.group, [0, 0, 0, 0])
        if row.state is MachineState.NOT_EXPECTED:
            c[2] += 1
        elif row.expected:
            c[0] += 1
        if row.state in BACK:
            c[1] += 1
        if row.state is MachineState.REPLACED:
            c[3] += 1
    return tuple(GroupCount(g, e, b, n, r) for g, (e, b, n, r) in sorted(counts.items()))


def snapshot_rejoin(
    snapshot: FleetSnapshot,
    machines: Sequence[FlyMachine] | None = None,
    *,
    filters: Filters = NO_FILTERS,
    stopped_ok: bool = False,
) -> RejoinReport | None:
    """The rejoin report for the snapshot's latest deploy record, if there is one: the
    hook ``quiesce status`` and the metrics exporter call (no I/O)."""
    if snapshot.latest_deploy is None:
        return None
    return rejoin_report(
        snapshot.latest_deploy, snapshot, machines, filters=filters, stopped_ok=stopped_ok
    )
