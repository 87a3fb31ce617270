"""Properties of the verdicts (hypothesis): generated fleets, Fly Machine lists and deploy
histories. The ground truth each property checks is computed from the generated scenario,
not from the report."""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quiesce.model.filters import Filters
from quiesce.model.fleet import ProcessRecord
from quiesce.model.machines import FlyMachine
from quiesce.model.metrics import generation
from quiesce.model.recover import stranded
from quiesce.model.rejoin import BACK, kept_beating, process_generation, rejoin_report
from quiesce.model.snapshot import FleetSnapshot
from tests.support.verdicts import NEW_RELEASE, NOW, OLD_RELEASE, T0, fly, new, proc, record

GROUPS = ("worker", "batch")
TAGS = ("", "app1", "app2")
FATES = (
    "back",  # updated, new Sidekiq kept beating
    "back-once",  # updated, new Sidekiq beat once (and died, or is about to)
    "reverted",  # started again on the old release, fresh Sidekiq
    "stopped",  # Fly: stopped
    "destroyed",  # Fly: destroyed (bluegreen blue, or replaced by a new id)
    "unlisted",  # Fly no longer lists it
    "quiet",  # still the old, quiet process
    "old-running",  # the old process, never quieted
    "replacing",  # Fly: replacing, nothing live
    "early",  # a process started 1.7 s before the quiet
)


@dataclasses.dataclass(frozen=True)
class Scenario:
    old: dict[str, tuple[str, str, int]]
    """Machine -> (group, tag, processes at the quiet)."""
    fates: dict[str, str]
    greens: dict[str, tuple[str, bool, str]]
    """New Machine -> (group, kept beating, release)."""
    with_fly: bool
    strategy: str
    stopped_ok: bool
    once: bool = False
    """Every new process beat once (and died, or is about to)."""

    def build(self) -> tuple[list[ProcessRecord], list[ProcessRecord], list[FlyMachine]]:
        before: list[ProcessRecord] = []
        now: list[ProcessRecord] = []
        machines: list[FlyMachine] = []
        for mid, (group, tag, n) in self.old.items():
            olds = [proc(mid, pid, tag=tag) for pid in range(1, n + 1)]
            before += olds
            fate = self.fates[mid]
            state, release = "started", NEW_RELEASE
            once = 0.05 if self.once else None
            if fate == "back":
                now += [new(mid, 10 + i, tag=tag, beats_for=once) for i in range(n)]
            elif fate == "back-once":
                now += [new(mid, 10 + i, tag=tag, beats_for=0.05) for i in range(n)]
            elif fate == "reverted":
                release = OLD_RELEASE
                now += [new(mid, 10 + i, tag=tag, beats_for=once) for i in range(n)]
            elif fate in ("stopped", "destroyed", "replacing"):
                state = fate
            elif fate == "quiet":
                release = OLD_RELEASE
                now += [dataclasses.replace(p, quiet=True) for p in olds]
            elif fate == "old-running":
                release = OLD_RELEASE
                now += olds
            elif fate == "early":
                now += [new(mid, 10 + i, tag=tag, at=T0 - 1.7, beats_for=once) for i in range(n)]
            if fate != "unlisted":
                machines.append(fly(mid, state, group, release))
        for mid, (group, kept, release) in self.greens.items():
            now.append(new(mid, 50, beats_for=None if kept and not self.once else 0.05))
            machines.append(fly(mid, "started", group, release))
        return before, now, machines

    def good(self, mid: str) -> bool:
        """Hosts live, non-quiet processes that kept beating, on the deployed release."""
        if mid in self.greens:
            _, kept, release = self.greens[mid]
            return kept and release == NEW_RELEASE
        return self.fates[mid] == "back"


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    n = draw(st.integers(1, 5))
    old = {
        f"m{i}": (
            draw(st.sampled_from(GROUPS)),
            draw(st.sampled_from(TAGS)),
            draw(st.integers(1, 2)),
        )
        for i in range(n)
    }
    fates = {mid: draw(st.sampled_from(("back",) * 4 + FATES)) for mid in old}
    greens = {
        f"g{i}": (
            draw(st.sampled_from(GROUPS)),
            draw(st.booleans()),
            draw(st.sampled_from((NEW_RELEASE, NEW_RELEASE, OLD_RELEASE))),
        )
        for i in range(draw(st.integers(0, 4)))
    }
    return Scenario(
        old,
        fates,
        greens,
        draw(st.booleans()),
        draw(st.sampled_from(("immediate", "bluegreen"))),
        draw(st.booleans()),
    )


def _report(s: Scenario, *, recorded_groups: bool = True):  # type: ignore[no-untyped-def]
    before, now, machines = s.build()
    groups = {mid: g for mid, (g, _, _) in s.old.items()} if recorded_groups else None
    rec = record(before, strategy=s.strategy, groups=groups)
    snapshot = FleetSnapshot(processes=tuple(now), taken_at=NOW, latest_deploy=rec)
    fly_list = machines if s.with_fly else None
    return rejoin_report(rec, snapshot, fly_list, stopped_ok=s.stopped_ok)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(scenarios(), st.booleans())
def test_whole_implies_every_slot_hosts_a_live_process_on_the_deployed_release(
    s: Scenario, recorded_groups: bool
) -> None:
    report = _report(s, recorded_groups=recorded_groups)
    if not report.whole:
        return
    stopped_ok = s.with_fly and s.stopped_ok
    expected = [m for m in s.old if not (stopped_ok and s.fates[m] == "stopped")]
    never = {"old-running", "early", "back-once"}
    if s.strategy != "bluegreen":
        never.add("quiet")  # in place: a quiet old process means the update has not happened
    if s.with_fly:
        never |= {"reverted"} | ({"stopped"} if not s.stopped_ok else set())
        assert all(r == NEW_RELEASE for _, _, r in s.greens.values()), report
        groups_of = {m: g for m, (g, _, _) in s.old.items()}
        if not recorded_groups:
            return  # the groups of unlisted Machines are guessed: only the above holds
        for group in GROUPS:
            slots = [m for m in expected if groups_of[m] == group]
            good = [m for m in slots if s.good(m)]
            good += [m for m, (g, _, _) in s.greens.items() if g == group and s.good(m)]
            assert len(good) >= len(slots), (group, report)
    else:
        # Heartbeats alone cannot see the image, and says so; every slot still has a live,
        # non-quiet process that kept beating and started after the quiet.
        assert any("not verified" in n for n in report.notes)
        live = [m for m in expected if s.fates[m] in ("back", "reverted")]
        live += [m for m, (_, kept, _) in s.greens.items() if kept]
        assert len(live) >= len(expected), report
    assert not [m for m in expected if s.fates[m] in never], report


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_a_process_that_beat_once_is_never_back(s: Scenario) -> None:
    once = dataclasses.replace(s, once=True)
    report = _report(once)
    assert not any(m.state in BACK for m in report.machines), report
    _, now, _ = once.build()
    for p in now:
        if p.identity.rsplit(":", 1)[1].startswith("new"):
            assert not kept_beating(p)


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_status_exporter_and_rejoin_use_one_new_process_rule(s: Scenario) -> None:
    before, now, _ = s.build()
    rec = record(before)
    old = frozenset(e.identity for e in rec.fleet)
    for p in now:
        assert generation(p, rec, old, NOW) == process_generation(p, rec, old, NOW)
        if p.started_at is not None and p.started_at < T0:
            assert process_generation(p, rec, old, NOW) == "old"


# -- recover -------------------------------------------------------------------------------

PROC_KINDS = ("quiet", "quiet", "running", "stalled-quiet", "quieting-unrecorded", "dead")


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[ProcessRecord], list[str], list[FlyMachine], int]:
    procs: list[ProcessRecord] = []
    recorded: list[str] = []
    machines: list[FlyMachine] = []
    for i in range(draw(st.integers(1, 5))):
        mid = f"m{i}"
        for pid in range(1, draw(st.integers(1, 3)) + 1):
            kind = draw(st.sampled_from(PROC_KINDS))
            tag = draw(st.sampled_from(TAGS))
            p = proc(
                mid,
                pid,
                tag=tag,
                quiet=kind.endswith("quiet"),
                beat_age=40.0 if kind.startswith("stalled") else 2.0,
                alive=kind != "dead",
            )
            procs.append(p)
            if kind != "quieting-unrecorded":
                recorded.append(p.identity)
        state = draw(st.sampled_from(("started", "started", "starting", "replacing", "stopped")))
        release = draw(st.sampled_from((OLD_RELEASE, NEW_RELEASE)))
        machines.append(fly(mid, state, "worker", release))
    return procs, recorded, machines, draw(st.integers(0, 2))


@settings(max_examples=300, deadline=None)
@given(fleets(), st.sampled_from(TAGS), st.booleans(), st.booleans())
def test_recover_never_selects_a_machine_with_a_live_non_quiet_process(
    fleet: tuple[list[ProcessRecord], list[str], list[FlyMachine], int],
    tag: str,
    by_tag: bool,
    with_fly: bool,
) -> None:
    procs, recorded, machines, depth = fleet
    # The processes were quieted by the oldest deploy; ``depth`` newer ones (failed
    # retries) recorded nothing about them.
    quieted_by = [p for p in procs if p.identity in recorded]
    newer = [record([], deploy_id=f"e{n}", started_at=T0 + n) for n in range(depth, 0, -1)]
    history = [*newer, record(quieted_by, deploy_id="d0")]
    snapshot = FleetSnapshot(processes=tuple(procs), taken_at=NOW)
    filters = Filters(tags=(tag,)) if by_tag else Filters()
    candidates, _ = stranded(
        snapshot, history, after_s=60, filters=filters, machines=machines if with_fly else None
    )
    by_machine = snapshot.by_machine()
    for c in candidates:
        live = [p for p in by_machine[c.machine] if p.alive]
        assert all(p.quiet and not p.is_stalled for p in live), c
        assert set(c.identities) == {p.identity for p in live}
        if with_fly:
            (m,) = [m for m in machines if m.id == c.machine]
            assert m.state == "started"
