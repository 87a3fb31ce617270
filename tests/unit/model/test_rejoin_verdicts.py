"""The deploy-truth cases (issue 15, Why 1, 2, 3 and 6) against the pure model: each
verdict and what it rests on."""

from __future__ import annotations

from quiesce.model.filters import Filters
from quiesce.model.fleet import ProcessRecord
from quiesce.model.machines import FlyMachine
from quiesce.model.metrics import ScrapeData, families
from quiesce.model.record import DeployRecord, DeployState
from quiesce.model.recover import stranded
from quiesce.model.rejoin import MachineState, RejoinReport, Target, rejoin_report, snapshot_rejoin
from quiesce.model.snapshot import FleetSnapshot
from quiesce.views.rejoin import rejoin_json, rejoin_text
from tests.support.verdicts import (
    NEW_RELEASE,
    NOW,
    OLD_RELEASE,
    T0,
    fly,
    new,
    proc,
    quieted,
    record,
)

S = MachineState
WORKERS = {"A": "worker", "B": "worker", "C": "worker"}


def report(
    rec: DeployRecord,
    now: list[ProcessRecord],
    machines: list[FlyMachine] | None = None,
    **kw: object,
) -> RejoinReport:
    snapshot = FleetSnapshot(processes=tuple(now), taken_at=NOW, latest_deploy=rec)
    return rejoin_report(rec, snapshot, machines, **kw)  # type: ignore[arg-type]


def states(r: RejoinReport) -> dict[str, MachineState]:
    return {m.machine: m.state for m in r.machines}


# -- Why 1: the old image is not back ------------------------------------------------------


def test_a_machine_reverted_to_the_old_release_is_old_image_and_not_whole() -> None:
    before = [proc("A"), proc("B"), proc("C")]
    rec = record(before, groups=WORKERS)
    now = [new("A"), new("B"), new("C")]  # C: fresh Sidekiq, new pid, after the quiet
    machines = [fly("A"), fly("B"), fly("C", release=OLD_RELEASE)]
    r = report(rec, now, machines)
    assert states(r) == {"A": S.REJOINED, "B": S.REJOINED, "C": S.OLD_IMAGE}
    assert not r.whole and (r.back, r.expected) == (2, 3)
    (c,) = r.not_back
    assert c.machine == "C" and "release 63" in c.why and "release 64" in c.why
    text = rejoin_text(r)
    assert "old-image" in text and "fleet NOT whole" in text
    assert rejoin_json(r)["not_back"] == ["C"]


def test_a_failed_quiet_and_restarted_machines_are_not_back_on_the_old_image() -> None:
    before = [proc("A"), proc("B")]
    rec = record(before, groups=WORKERS).finish(T0 + 40, failure="Redis went away")
    assert rec.state is DeployState.FAILED
    now = [new("A"), new("B")]
    machines = [fly("A", release=OLD_RELEASE), fly("B", release=OLD_RELEASE)]
    r = report(rec, now, machines)
    assert states(r) == {"A": S.OLD_IMAGE, "B": S.OLD_IMAGE}
    assert not r.whole
    assert any("failed" in n for n in r.notes)


def test_without_a_target_the_newest_fly_release_is_the_target_and_said() -> None:
    before = [proc("A"), proc("B")]
    rec = record(before, target=None)
    machines = [fly("A"), fly("B", release=OLD_RELEASE)]
    r = report(rec, [new("A"), new("B")], machines)
    assert states(r) == {"A": S.REJOINED, "B": S.OLD_IMAGE}
    assert r.target.source == "fly-newest" and r.target.release_version == NEW_RELEASE
    assert any("newest release Fly lists (64)" in n for n in r.notes)


def test_a_machine_fly_shows_without_release_or_image_is_said_unverified() -> None:
    before = [proc("A")]
    rec = record(before, groups={"A": "worker"})
    r = report(rec, [new("A")], [FlyMachine("A", state="started", process_group="worker")])
    assert r.whole
    assert any("Fly shows no release or image for A" in n for n in r.notes)


def test_without_fly_the_report_says_the_image_is_not_verified() -> None:
    before = [proc("A")]
    r = report(record(before), [new("A")])
    assert r.whole and not r.with_fly
    assert any("image each Machine runs is not verified" in n for n in r.notes)


def test_an_old_release_label_is_not_back_even_when_started_after_the_quiet() -> None:
    before = [proc("A"), proc("B")]
    rec = record(before)
    old_label = f"release:{OLD_RELEASE}"
    r = report(rec, [new("A", labels=(old_label,)), new("B", labels=(f"release:{rec.release}",))])
    assert states(r) == {"A": S.OLD_RUNNING, "B": S.REJOINED}


# -- Why 2: groups from Fly, replaced Machines ------------------------------------------


def test_bluegreen_default_tags_and_fly_groups_is_whole_and_blues_replaced() -> None:
    blue = [proc("b1"), proc("b2"), proc("b3")]  # tag "": Sidekiq's default
    rec = record(
        blue, strategy="bluegreen", groups={"b1": "worker", "b2": "worker", "b3": "worker"}
    )
    greens = [new("g1"), new("g2"), new("g3")]
    r = report(rec, greens, [fly("g1"), fly("g2"), fly("g3")])
    assert states(r) == {
        "b1": S.REPLACED, "b2": S.REPLACED, "b3": S.REPLACED,
        "g1": S.NEW, "g2": S.NEW, "g3": S.NEW,
    }  # fmt: skip
    assert r.whole
    assert [(g.group, g.back, g.expected, g.replaced) for g in r.groups] == [("worker", 3, 3, 3)]
    assert "group worker: 3 of 3 back, 3 replaced" in rejoin_text(r)


def test_bluegreen_without_fly_groups_recorded_falls_back_to_fly_list_then_says_tags() -> None:
    blue = [proc("b1"), proc("b2")]
    rec = record(blue, strategy="bluegreen", groups=None)
    greens = [new("g1"), new("g2")]
    r = report(rec, greens, [fly("g1"), fly("g2")])
    assert r.whole and [g.group for g in r.groups] == ["worker"]
    # Heartbeats alone: one group by tag, said, and the blues are replaced, not pending.
    r = report(rec, [quieted(blue[0]), *greens])
    assert r.whole and r.grouped_by == "tag"
    assert states(r)["b1"] is S.REPLACED and states(r)["b2"] is S.REPLACED
    assert any("grouped by Sidekiq tag" in n for n in r.notes)


def test_status_and_the_exporter_say_replaced_not_pending_forever() -> None:
    blue = [proc("b1"), proc("b2")]
    rec = record(blue, strategy="bluegreen", groups={"b1": "worker", "b2": "worker"})
    snapshot = FleetSnapshot(processes=(new("g1"), new("g2")), taken_at=NOW, latest_deploy=rec)
    hooked = snapshot_rejoin(snapshot)
    assert hooked is not None and hooked.whole
    assert hooked.counts()[S.PENDING] == 0 and hooked.counts()[S.REPLACED] == 2
    served = {f.name: f for f in families(ScrapeData(fleet=snapshot, queues=None))}
    machines = dict(served["quiesce_rejoin_machines"].samples)
    assert machines.get(("pending",), 0.0) == 0.0 and machines[("replaced",)] == 2.0
    assert dict(served["quiesce_rejoin_whole"].samples)[()] == 1.0


def test_immediate_with_a_new_machine_id_is_whole() -> None:
    before = [proc("A"), proc("B")]
    rec = record(before, groups={"A": "worker", "B": "worker"})
    r = report(rec, [new("A"), new("Z")], [fly("A"), fly("Z")])
    assert states(r) == {"A": S.REJOINED, "B": S.REPLACED, "Z": S.NEW}
    assert r.whole


# -- Why 6: the gate's smaller holes ------------------------------------------------------


def test_a_machine_stopped_after_the_deploy_is_not_back_unless_stopped_ok() -> None:
    before = [proc("A"), proc("B")]
    rec = record(before, groups=WORKERS)
    machines = [fly("A"), fly("B", "stopped")]
    r = report(rec, [new("A")], machines)
    assert states(r)["B"] is S.STOPPED and not r.whole
    r = report(rec, [new("A")], machines, stopped_ok=True)
    assert states(r)["B"] is S.NOT_EXPECTED and r.whole


def test_a_process_claiming_a_stopped_machine_is_a_conflict() -> None:
    before = [proc("A"), proc("B")]
    rec = record(before, groups=WORKERS)
    # The process on Machine X says it is B (DYNO copied), while Fly lists B stopped.
    r = report(rec, [new("A"), new("B")], [fly("A"), fly("B", "stopped")])
    assert states(r)["B"] is S.CONFLICT and not r.whole
    assert "Fly lists it stopped" in next(m.why for m in r.machines if m.machine == "B")


def test_a_process_claiming_a_machine_of_another_group_is_a_conflict() -> None:
    before = [proc("A"), proc("B")]
    rec = record(before, groups={"A": "worker", "B": "worker"})
    r = report(rec, [new("A"), new("B")], [fly("A"), fly("B", group="web")])
    assert states(r) == {"A": S.REJOINED, "B": S.CONFLICT} and not r.whole
    assert "group web" in r.not_back[0].why


def test_a_process_that_beat_once_is_starting_not_back() -> None:
    before = [proc("A")]
    rec = record(before, groups=WORKERS)
    once = new("A", beats_for=0.01)
    r = report(rec, [once], [fly("A")])
    assert states(r) == {"A": S.STARTING} and not r.whole
    r = report(rec, [new("A", beats_for=5.0)], [fly("A")])
    assert states(r) == {"A": S.REJOINED} and r.whole


def test_a_process_started_before_the_quiet_is_not_new_whatever_its_clock() -> None:
    before = [proc("A"), proc("B")]
    rec = record(before)
    r = report(rec, [new("A", at=T0 - 1.7), new("B", at=T0 - 1.7, skew=+30.0)])
    # Not quieted, taking jobs, maybe with the old code: old-running, never back.
    assert states(r) == {"A": S.OLD_RUNNING, "B": S.OLD_RUNNING}
    r = report(rec, [new("A", at=T0 + 0.5, skew=-120.0)])
    assert states(r)["A"] is S.REJOINED


# -- Why 3: recover acts on whole Machines ------------------------------------------------


def test_recover_by_tag_never_restarts_a_machine_shared_with_a_working_app() -> None:
    e1 = proc("E", 1, tag="app1")
    rec = record([e1])
    snapshot = FleetSnapshot(
        processes=(quieted(e1), proc("E", 2, tag="app2"), quieted(proc("F", 1, tag="app1"))),
        taken_at=NOW,
        latest_deploy=rec,
    )
    found, notes = stranded(snapshot, [rec], after_s=60, filters=Filters(tags=("app1",)))
    assert found == []
    assert any(n.startswith("E: it also runs 1 non-quiet process (tag app2)") for n in notes)
    assert any(n.startswith("F: quiet, but not by a recorded deploy") for n in notes)


def test_recover_checks_fly_first_and_reads_the_whole_history() -> None:
    a, b, c, d = (proc(m) for m in "ABCD")
    first = record([a, b, c, d], deploy_id="d1", started_at=T0 - 900)
    second = record([], deploy_id="d2")  # a second failed deploy: nothing newly quiet
    snapshot = FleetSnapshot(
        processes=tuple(quieted(p) for p in (a, b, c, d)), taken_at=NOW, latest_deploy=second
    )
    machines = [
        fly("A", release=OLD_RELEASE),
        fly("B", "starting"),
        fly("C"),
        fly("D", "replacing"),
    ]
    found, notes = stranded(
        snapshot, [second, first], after_s=60, machines=machines, target=Target(NEW_RELEASE)
    )
    assert [c.machine for c in found] == ["A"] and found[0].deploy_id == "d1"
    assert found[0].quiet_for_s == NOW - (T0 - 900 + 5)
    assert sorted(n.split(":")[0] for n in notes) == ["B", "C", "D"]
    assert any("already on the deployed release 64" in n for n in notes)
