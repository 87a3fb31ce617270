"""The rejoin model (pure): record + snapshot + Machine list + now -> report."""

from __future__ import annotations

from collections.abc import Sequence

from quiesce.model.filters import Filters
from quiesce.model.fleet import ProcessRecord, SidekiqVersion
from quiesce.model.machines import FlyMachine
from quiesce.model.record import DeployRecord
from quiesce.model.record_entries import FleetEntry, OutcomeEntry
from quiesce.model.recover import stranded
from quiesce.model.rejoin import (
    MachineState,
    RejoinReport,
    rejoin_report,
    release_label,
    snapshot_rejoin,
)
from quiesce.model.snapshot import FleetSnapshot
from quiesce.views.rejoin import rejoin_json, rejoin_text

T0 = 1_800_000_000.0
NOW = T0 + 300
NEW_IMAGE = "registry.fly.io/app:deployment-NEW"
OLD_IMAGE = "registry.fly.io/app:deployment-OLD"
S = MachineState


def proc(
    host: str,
    pid: int = 1,
    nonce: str = "old",
    *,
    started: float = T0 - 3600,
    quiet: bool = False,
    busy: int = 0,
    tag: str = "app",
    labels: tuple[str, ...] = (),
    skew: float = 0.0,
    version: str = "7.3.10",
    beat_age: float | None = 2.0,
    taken: float = NOW,
) -> ProcessRecord:
    """A live process; ``skew``: its clock minus Redis's."""
    interval = 5.0 if version.startswith("6") else 10.0
    return ProcessRecord(
        identity=f"{host}:{pid}:{nonce}",
        hostname=host,
        pid=pid,
        alive=True,
        tag=tag,
        labels=labels,
        version=SidekiqVersion(version, False, interval),
        concurrency=5,
        busy=busy,
        beat=None if beat_age is None else taken - beat_age + skew,
        beat_age_s=beat_age,
        quiet=quiet,
        started_at=started + skew,
    )


def record(
    before: Sequence[ProcessRecord], strategy: str = "immediate", release: str | None = NEW_IMAGE
) -> DeployRecord:
    return DeployRecord(
        deploy_id="20270115T080000Z-abc123",
        release=release,
        strategy=strategy,
        started_at=T0,
        until="delivered",
        timeout_s=30.0,
        fleet=tuple(FleetEntry.from_process(p) for p in before),
        outcomes={
            p.identity: OutcomeEntry("confirmed", pushed_at=T0 + 0.5, confirmed_at=T0 + 5.0)
            for p in before
        },
    )


def quieted(p: ProcessRecord, busy: int = 0) -> ProcessRecord:
    return proc(p.hostname, p.pid or 1, p.identity.rsplit(":", 1)[1], quiet=True, busy=busy)


def new(host: str, pid: int = 1, *, at: float, **kw: object) -> ProcessRecord:
    return proc(host, pid, f"new{pid}", started=at, **kw)  # type: ignore[arg-type]


def report(
    rec: DeployRecord,
    now_procs: Sequence[ProcessRecord],
    machines: Sequence[FlyMachine] | None = None,
    **kw: object,
) -> RejoinReport:
    snapshot = FleetSnapshot(processes=tuple(now_procs), taken_at=NOW, latest_deploy=rec)
    return rejoin_report(rec, snapshot, machines, **kw)  # type: ignore[arg-type]


def states(r: RejoinReport) -> dict[str, MachineState]:
    return {m.machine: m.state for m in r.machines}


def fly(mid: str, state: str = "started", group: str = "worker") -> FlyMachine:
    return FlyMachine(id=mid, state=state, process_group=group, region="iad")


# -- immediate ------------------------------------------------------------------------


def test_immediate_same_ids_new_pids_one_machine_still_draining() -> None:
    before = [proc("m1"), proc("m2"), proc("m3")]
    rec = record(before)
    r = report(rec, [new("m1", at=T0 + 30), new("m2", at=T0 + 65), quieted(before[2], busy=2)])
    assert states(r) == {"m1": S.REJOINED, "m2": S.REJOINED, "m3": S.DRAINING}
    assert not r.whole
    assert [m.machine for m in r.not_back] == ["m3"]
    assert (r.back, r.expected) == (2, 3)
    m1 = next(m for m in r.machines if m.machine == "m1")
    assert m1.paused_s == 25.0  # quiet confirmed at T0+5, new process at T0+30
    assert (r.first_rejoin_s, r.last_rejoin_s) == (30.0, 65.0)
    longest = r.longest_pause
    assert longest is not None and longest.machine == "m2" and longest.paused_s == 60.0
    assert "m3" in rejoin_text(r) and "fleet NOT whole" in rejoin_text(r)
    assert rejoin_json(r)["not_back"] == ["m3"]


def test_immediate_all_back_is_whole_and_says_heartbeats_alone() -> None:
    before = [proc("m1"), proc("m2")]
    r = report(record(before), [new("m1", at=T0 + 30), new("m2", at=T0 + 40)])
    assert r.whole
    assert any("not verified" in n for n in r.notes)
    assert "fleet whole" in rejoin_text(r)


def test_quiet_idle_pending_and_missing_at_the_deadline() -> None:
    before = [proc("m1"), proc("m2"), proc("m3")]
    rec = record(before)
    live = [new("m1", at=T0 + 30), quieted(before[1])]
    r = report(rec, live)
    assert states(r) == {"m1": S.REJOINED, "m2": S.QUIET_IDLE, "m3": S.PENDING}
    late = report(rec, live, deadline=NOW - 1)
    assert states(late) == {"m1": S.REJOINED, "m2": S.MISSING, "m3": S.MISSING}
    assert not late.whole


def test_an_old_process_not_quiet_is_old_running() -> None:
    before = [proc("m1")]
    r = report(record(before), before)
    assert states(r) == {"m1": S.OLD_RUNNING}
    assert not r.whole


def test_an_old_process_that_popped_the_signal_is_quiet_before_its_flag_says_so() -> None:
    """``quiet --until delivered`` confirms one beat before Sidekiq writes ``quiet``: a
    rejoin right after it must not call those processes old-running."""
    before = [proc("m1"), proc("m2", busy=2)]
    rec = record(before)
    soon = T0 + 20  # within the signal's 60 s, beats after the push
    live = [proc("m1", taken=soon), proc("m2", busy=2, taken=soon)]
    snapshot = FleetSnapshot(processes=tuple(live), taken_at=soon, latest_deploy=rec)
    r = rejoin_report(rec, snapshot)
    assert states(r) == {"m1": S.QUIET_IDLE, "m2": S.DRAINING}
    # The same processes still not quiet long after the signal expired: old-running.
    assert states(report(rec, before)) == {"m1": S.OLD_RUNNING, "m2": S.OLD_RUNNING}


# -- bluegreen --------------------------------------------------------------------------


def test_bluegreen_counts_per_group_new_ids_replace_old_ones() -> None:
    blue = [proc("b1"), proc("b2")]
    rec = record(blue, strategy="bluegreen")
    green_one = [quieted(blue[0]), quieted(blue[1]), new("g1", at=T0 + 90)]
    machines = [fly("b1"), fly("b2"), fly("g1")]
    r = report(rec, green_one, machines)
    # One green fills one blue's slot (bluegreen: the quiet blues are destroyed next).
    assert states(r) == {"b1": S.REPLACED, "b2": S.QUIET_IDLE, "g1": S.NEW}
    assert [(g.group, g.back, g.expected) for g in r.groups] == [("worker", 1, 2)]
    assert not r.whole

    both = [*green_one, new("g2", at=T0 + 95)]
    r = report(rec, both, [*machines, fly("g2")])
    assert r.whole  # 2 of 2 back while the blues are still quiet: they are destroyed next

    # Blues destroyed: Fly no longer lists them; the tag maps them to the same group.
    r = report(rec, both[2:], [fly("g1"), fly("g2")])
    assert states(r) == {"b1": S.REPLACED, "b2": S.REPLACED, "g1": S.NEW, "g2": S.NEW}
    assert r.whole
    assert [(g.group, g.back, g.expected) for g in r.groups] == [("worker", 2, 2)]


def test_immediate_replacement_with_a_new_id_counts_for_the_gone_machine() -> None:
    before = [proc("m1"), proc("m2")]
    rec = record(before)
    r = report(rec, [new("m1", at=T0 + 30), new("m9", at=T0 + 50)], [fly("m1"), fly("m9")])
    assert states(r) == {"m1": S.REJOINED, "m2": S.REPLACED, "m9": S.NEW}
    assert r.whole
    r = report(rec, [new("m1", at=T0 + 30)], [fly("m1")])
    assert not r.whole


# -- swarm, stopped Machines, scale-up ---------------------------------------------------


def test_swarm_machine_rejoins_when_all_its_processes_are_back() -> None:
    before = [proc("m1", 1), proc("m1", 2), proc("m1", 3)]
    rec = record(before)
    r = report(rec, [new("m1", 1, at=T0 + 30), new("m1", 2, at=T0 + 31)])
    assert states(r) == {"m1": S.PARTIAL}
    r = report(rec, [new("m1", i, at=T0 + 29 + i) for i in (1, 2, 3)])
    assert states(r) == {"m1": S.REJOINED}
    assert r.machines[0].rejoined_at == T0 + 32  # the last of the three
    assert r.whole


def test_stopped_machine_is_not_back_unless_stopped_machines_are_expected() -> None:
    before = [proc("m1"), proc("m2")]
    machines = [fly("m1"), fly("m2", "stopped")]
    r = report(record(before), [new("m1", at=T0 + 30)], machines)
    assert states(r) == {"m1": S.REJOINED, "m2": S.STOPPED}
    assert not r.whole
    r = report(record(before), [new("m1", at=T0 + 30)], machines, stopped_ok=True)
    assert states(r) == {"m1": S.REJOINED, "m2": S.NOT_EXPECTED}
    assert r.whole
    assert r.groups[0].not_expected == 1 and r.groups[0].expected == 1


def test_scale_up_machine_is_new_and_does_not_hide_a_missing_one() -> None:
    before = [proc("m1"), proc("m2")]
    rec = record(before)
    r = report(rec, [new("m1", at=T0 + 30), new("m2", at=T0 + 31), new("m3", at=T0 + 32)])
    assert states(r)["m3"] is S.NEW and r.whole
    # Heartbeats alone cannot tell a scale-up from a Machine replaced with a new id.
    r = report(rec, [new("m1", at=T0 + 30), new("m3", at=T0 + 32)])
    assert states(r)["m2"] is S.REPLACED and r.whole
    # Fly lists m2 started: it must come back itself.
    r = report(
        rec, [new("m1", at=T0 + 30), new("m3", at=T0 + 32)], [fly(m) for m in ("m1", "m2", "m3")]
    )
    assert states(r)["m2"] is S.PENDING
    assert not r.whole


# -- clocks, versions, other apps, release labels ---------------------------------------


def test_clock_skew_is_measured_per_process_from_its_beat() -> None:
    before = [proc("m1"), proc("m2")]
    rec = record(before)
    # m1's clock is 2 minutes slow: by its own clock it started before the quiet.
    r = report(rec, [new("m1", at=T0 + 20, skew=-120.0), new("m2", at=T0 + 20, skew=+120.0)])
    assert states(r) == {"m1": S.REJOINED, "m2": S.REJOINED}
    assert r.machines[0].rejoined_at == T0 + 20  # moved onto the Redis clock
    # A process that really started before the quiet is not a rejoin, however fast its clock.
    r = report(rec, [new("m1", at=T0 - 60, skew=+50.0)])
    assert states(r)["m1"] is S.OLD_RUNNING
    # Unmeasurable offset (no beat age): no slack either, and it has not been seen beating.
    r = report(rec, [new("m1", at=T0 - 10, beat_age=None), new("m2", at=T0 + 60, beat_age=None)])
    assert states(r) == {"m1": S.OLD_RUNNING, "m2": S.STARTING}


def test_mixed_sidekiq_versions() -> None:
    before = [proc("m1", version="6.4.1"), proc("m2", version="6.4.1")]
    rec = record(before)
    live = [new("m1", at=T0 + 30, version="7.3.10"), quieted(before[1])]
    r = report(rec, live)
    assert states(r) == {"m1": S.REJOINED, "m2": S.QUIET_IDLE}


def test_other_apps_in_the_same_redis_are_filtered_by_tag_or_fly_list() -> None:
    mine = [proc("m1"), proc("o1", tag="other")]
    rec = record(mine)
    live = [new("m1", at=T0 + 30), new("o2", at=T0 + 30, tag="other")]
    r = report(rec, live, filters=Filters(tags=("app",)))
    assert states(r) == {"m1": S.REJOINED}
    assert r.whole
    r = report(rec, live, filters=Filters(hostnames=("m*",)))
    assert states(r) == {"m1": S.REJOINED}
    # With Fly's list, a new hostname the app does not have is another app's process.
    r = report(record([proc("m1")]), live, [fly("m1")])
    assert states(r) == {"m1": S.REJOINED}


def test_release_label_and_start_time_must_both_say_new() -> None:
    before = [proc("m1", labels=(OLD_IMAGE,)), proc("m2", labels=(OLD_IMAGE,))]
    rec = record(before)
    live = [
        # an old process restarted by its supervisor after the quiet: old code, not back
        new("m1", at=T0 + 30, labels=(OLD_IMAGE,)),
        # the new release label, but it started long before the quiet: not quieted by it
        new("m2", at=T0 - 900, labels=(NEW_IMAGE,)),
    ]
    r = report(rec, live)
    assert states(r) == {"m1": S.OLD_RUNNING, "m2": S.OLD_RUNNING}
    r = report(rec, [new("m2", at=T0 + 30, labels=(NEW_IMAGE,))])
    assert states(r)["m2"] is S.REJOINED
    assert release_label(["reliable", "release:v42"]) == "v42"
    assert release_label(["reliable", NEW_IMAGE]) == NEW_IMAGE
    assert release_label(["reliable"]) is None
    # The registry may be left out of the label: the image tag still matches.
    r = report(rec, [new("m1", at=T0 + 30, labels=("app:deployment-NEW",))])
    assert states(r)["m1"] is S.REJOINED


def test_skipped_processes_machines_are_not_waited_for() -> None:
    emb, live = proc("e1"), proc("m1")
    rec = record([emb, live])
    rec = rec.with_outcomes({emb.identity: OutcomeEntry("embedded")})
    r = report(rec, [emb, new("m1", at=T0 + 30)])
    assert states(r) == {"m1": S.REJOINED}
    assert r.whole


def test_snapshot_hook_and_recover_candidates() -> None:
    before = [proc("m1"), proc("m2"), proc("m3", 1), proc("m3", 2)]
    rec = record(before)
    live = [quieted(before[0]), new("m2", at=T0 + 30), quieted(before[2]), before[3]]
    snapshot = FleetSnapshot(processes=tuple(live), taken_at=NOW, latest_deploy=rec)
    hooked = snapshot_rejoin(snapshot)
    assert hooked is not None and states(hooked)["m2"] is S.REJOINED
    assert snapshot_rejoin(FleetSnapshot(processes=(), taken_at=NOW)) is None
    candidates, notes = stranded(snapshot, [rec], after_s=60)
    # m3 still runs a non-quiet process: never touched.
    assert [c.machine for c in candidates] == ["m1"]
    assert candidates[0].quiet_for_s == NOW - (T0 + 5)
    assert stranded(snapshot, [rec], after_s=NOW)[0] == []
    undated = FleetSnapshot(processes=(proc("x1", quiet=True),), taken_at=NOW, latest_deploy=rec)
    found, notes = stranded(undated, [rec], after_s=60)
    assert found == [] and notes and "not touched" in notes[0]
