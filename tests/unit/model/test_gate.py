"""The ``quieting`` state (popped TSTP, quiet from the next beat) and ``check_expect``."""

from __future__ import annotations

import dataclasses

import pytest

from quiesce.model.decode import decode_snapshot
from quiesce.model.fleet import ProcessRecord, ProcessState, SidekiqVersion
from quiesce.model.gate import check_expect
from quiesce.model.record import DeployRecord
from quiesce.model.record_entries import OutcomeEntry
from quiesce.model.snapshot import FleetSnapshot, is_quieting, mark_quieting
from quiesce.sidekiq.rows import RawSnapshot
from tests.support.captures import load, raw_row

V7 = SidekiqVersion("7.3.10", inferred=False, beat_interval_s=10.0)
NOW = 2000.0
PUSHED = 1990.0


def proc(identity: str, **kw: object) -> ProcessRecord:
    host, pid, _ = identity.rsplit(":", 2)
    base = ProcessRecord(identity=identity, hostname=host, pid=int(pid), alive=True, version=V7)
    return dataclasses.replace(base, **{"beat_age_s": 1.0, **kw})  # type: ignore[arg-type]


def deploy(**outcomes: OutcomeEntry) -> DeployRecord:
    return DeployRecord("d", None, "s", PUSHED - 1, "delivered", 30.0).with_outcomes(
        {f"{name}:1:abcdefabcdef": entry for name, entry in outcomes.items()}
    )


# -- is_quieting -------------------------------------------------------------------------


def test_confirmed_outcome_is_quieting_until_quiet() -> None:
    record = deploy(a=OutcomeEntry("confirmed", PUSHED, PUSHED + 3, 1))
    p = proc("a:1:abcdefabcdef")
    assert is_quieting(p, record, NOW)
    (marked,) = mark_quieting([p], record, NOW)
    assert marked.state is ProcessState.QUIETING
    quiet = dataclasses.replace(marked, quiet=True)
    assert quiet.state is ProcessState.QUIET and not is_quieting(quiet, record, NOW)


def test_pending_entry_with_a_beat_after_the_push_and_no_tstp_left() -> None:
    record = deploy(a=OutcomeEntry("pending", PUSHED, None, 1))
    popped = proc("a:1:abcdefabcdef", beat_age_s=5.0)  # last beat at 1995, after the push
    assert is_quieting(popped, record, NOW)
    queued = dataclasses.replace(popped, pending_signals=("TSTP",))
    assert not is_quieting(queued, record, NOW)
    before = proc("a:1:abcdefabcdef", beat_age_s=15.0)  # last beat at 1985: before the push
    assert not is_quieting(before, record, NOW)


def test_window_closes_sixty_seconds_after_the_push() -> None:
    record = deploy(a=OutcomeEntry("confirmed", PUSHED, PUSHED + 3, 1))
    late = proc("a:1:abcdefabcdef", beat_age_s=1.0)
    assert not is_quieting(late, record, PUSHED + 70)  # beat at +69 s, still not quiet: no


def test_schema_1_confirmed_entry_uses_confirmed_at() -> None:
    record = deploy(a=OutcomeEntry("confirmed", None, PUSHED, 0))
    assert is_quieting(proc("a:1:abcdefabcdef"), record, NOW)
    assert not is_quieting(proc("a:1:abcdefabcdef"), deploy(a=OutcomeEntry("confirmed")), NOW)


@pytest.mark.parametrize(
    "kw",
    [
        {"embedded": True},
        {"problem": "bad"},
        {"alive": False},
        {"beat_age_s": None},
    ],
)
def test_never_quieting(kw: dict[str, object]) -> None:
    record = deploy(a=OutcomeEntry("confirmed", PUSHED, PUSHED + 3, 1))
    assert not is_quieting(proc("a:1:abcdefabcdef", **kw), record, NOW)
    assert not is_quieting(proc("b:1:abcdefabcdef"), record, NOW)  # not in the record
    assert not is_quieting(proc("a:1:abcdefabcdef"), None, NOW)


def test_stalled_wins_over_quieting() -> None:
    record = deploy(a=OutcomeEntry("confirmed", PUSHED, PUSHED + 3, 1))
    (p,) = mark_quieting([proc("a:1:abcdefabcdef", beat_age_s=21.0)], record, NOW)
    assert p.quieting and p.state is ProcessState.STALLED  # beat 21 s ago, 10 s interval


def test_decode_snapshot_marks_quieting_from_the_stored_record() -> None:
    capture = load("7.3.10", "idle")
    row = raw_row(capture)
    now = capture["captured_at"]
    record = DeployRecord("d", None, "s", now - 20, "delivered", 30.0).with_outcomes(
        {row.identity: OutcomeEntry("confirmed", now - 10, now - 5, 1)}
    )
    raw = RawSnapshot(redis="r", time=now, rows=(row,), latest_deploy=record.to_json())
    snapshot = decode_snapshot(raw)
    assert snapshot.latest_deploy == record and snapshot.deploy_problem is None
    assert snapshot.processes[0].state is ProcessState.QUIETING


def test_merge_judges_each_server_on_its_own_clock() -> None:
    record = deploy(
        a=OutcomeEntry("pending", 100.0, None, 1), b=OutcomeEntry("pending", 5000.0, None, 1)
    )
    older = DeployRecord("old", None, "s", 1.0, "delivered", 30.0)
    part_a = FleetSnapshot((proc("a:1:abcdefabcdef", beat_age_s=5.0),), taken_at=110.0)
    part_b = FleetSnapshot(
        (proc("b:1:abcdefabcdef", beat_age_s=5.0),),
        taken_at=5010.0,
        latest_deploy=record,
        deploy_problem="x (r2)",
    )
    part_a = dataclasses.replace(part_a, latest_deploy=older)
    merged = FleetSnapshot.merge([part_a, part_b])
    assert merged.latest_deploy is record and merged.deploy_problem == "x (r2)"
    assert [p.state for p in merged.processes] == [ProcessState.QUIETING] * 2


# -- check_expect --------------------------------------------------------------------------


def snap(*procs: ProcessRecord) -> FleetSnapshot:
    return FleetSnapshot(processes=procs, taken_at=NOW)


QUIETING = proc("q:1:abcdefabcdef", quieting=True)
QUIET = proc("s:1:abcdefabcdef", quiet=True)
RUNNING = proc("r:1:abcdefabcdef")
EMBEDDED = proc("e:1:abcdefabcdef", embedded=True)
DEAD = ProcessRecord(identity="d:1:abcdefabcdef", hostname="d", pid=1, alive=False)
STALLED = proc("t:1:abcdefabcdef", beat_age_s=40.0)
UNREADABLE = proc("u:1:abcdefabcdef", problem="info is not valid JSON")


def test_quiet_accepts_quiet_and_quieting_and_ignores_embedded_and_dead() -> None:
    result = check_expect(snap(QUIET, QUIETING, EMBEDDED, DEAD), "quiet")
    assert result.ok and result.live == 2
    assert result.counts == {ProcessState.QUIET: 1, ProcessState.QUIETING: 1}
    assert result.message == "all 2 live processes quiet (1 quieting: quiet from their next beat)"


@pytest.mark.parametrize("other", [RUNNING, STALLED, UNREADABLE])
def test_quiet_fails_on_any_other_live_state(other: ProcessRecord) -> None:
    result = check_expect(snap(QUIET, other), "quiet")
    assert not result.ok
    assert result.offending == ((other.identity, other.state),)
    assert result.message == f"1 of 2 live processes not quiet: {other.identity} ({other.state})"


def test_quiet_on_an_empty_fleet_is_ok_with_a_note() -> None:
    result = check_expect(snap(DEAD, EMBEDDED), "quiet")
    assert result.ok and result.live == 0 and "no live processes" in result.message


def test_running_needs_every_live_process_running() -> None:
    assert check_expect(snap(RUNNING, EMBEDDED, DEAD), "running").ok
    result = check_expect(snap(RUNNING, QUIETING), "running")
    assert not result.ok and "q:1:abcdefabcdef (quieting)" in result.message


def test_running_needs_min_live_processes() -> None:
    empty = check_expect(snap(DEAD), "running")
    assert not empty.ok and empty.message == "0 live processes running, expected at least 1"
    few = check_expect(snap(RUNNING), "running", min_live=3)
    assert not few.ok and few.message == "1 live processes running, expected at least 3"
    assert check_expect(snap(RUNNING), "running", min_live=1).message == (
        "all 1 live processes running"
    )


def test_message_names_five_and_counts_the_rest() -> None:
    procs = [proc(f"m{i}:1:abcdefabcdef") for i in range(8)]
    result = check_expect(snap(*procs), "quiet")
    assert not result.ok and len(result.offending) == 8
    assert result.message.count("(running)") == 5 and result.message.endswith("and 3 more")


def test_only_running_or_quiet() -> None:
    with pytest.raises(ValueError, match="running' or 'quiet"):
        check_expect(snap(), "stalled")
