"""The quiet run's wait loop on a virtual clock: minutes of Sidekiq behaviour in milliseconds.

``FakeFleet`` implements the store port in memory with Sidekiq's semantics: a beat every
``interval`` s refreshes the hash TTL (60 s), pops one signal, and reports quiet on the
next beat; a signal list expires 60 s after its last push; a stalled process does not beat.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import pytest

from quiesce.errors import ExitCode, RedisRefused, RedisUnavailable
from quiesce.model.quiet import Outcome
from quiesce.model.record import parse_deploy_record
from quiesce.model.report import QuietOptions, QuietReport
from quiesce.model.verdict import Until
from quiesce.runs.quiet import quiet_fleet
from quiesce.sidekiq.keys import PROCESS_FIELDS, Keys
from quiesce.sidekiq.rows import (
    EmptyFleetHints,
    LedgerWrite,
    Poll,
    PollRow,
    Push,
    RawProcess,
    RawSnapshot,
    ServerIdentity,
)


@dataclasses.dataclass
class FakeProcess:
    identity: str
    interval: float = 10.0
    phase: float = 1.0
    stalled_until: float = 0.0
    """Does not beat before this time (0: never stalls)."""
    dead: bool = False
    """Stopped for good: never beats again."""
    exits_at: float | None = None
    quiet: bool = False
    popped_tstp_at: float | None = None
    """Quiet is reported from the beat after the one that popped TSTP."""
    last_beat: float = 0.0
    in_set: bool = True
    wiped_at: float = -1.0
    """When Redis lost this process's keys (its hash is gone until it beats again)."""


class FakeFleet:
    label = "redis://fake/0"
    keys = Keys()

    def __init__(self, processes: Sequence[FakeProcess]) -> None:
        self.now = 0.0
        self.round_trips = 0
        self.procs = {p.identity: p for p in processes}
        self.signals: dict[str, list[str]] = {}
        self.signals_expire: dict[str, float] = {}
        self.pushes: list[tuple[float, list[str]]] = []
        self.saved: list[str] = []
        self.marked: list[str] = []
        self.run_id: str | None = "run-0"
        self.wrong_type: set[str] = set()
        """Identities whose signal list is not a list: pushes and polls error."""

    # the clock -------------------------------------------------------------
    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            due = [(self._next_beat(p), p) for p in self.procs.values() if self._beats(p)]
            due = [(t, p) for t, p in due if t <= end]
            if not due:
                break
            t, proc = min(due, key=lambda d: d[0])
            self.now = t
            self._beat(proc)
        self.now = end
        for p in self.procs.values():
            if p.exits_at is not None and p.exits_at <= self.now:
                p.in_set = False

    def _beats(self, p: FakeProcess) -> bool:
        return not p.dead and not (p.exits_at is not None and p.exits_at <= self.now)

    def _next_beat(self, p: FakeProcess) -> float:
        t = p.last_beat + p.interval if p.last_beat else p.phase
        return max(t, p.stalled_until)

    def _beat(self, p: FakeProcess) -> None:
        p.last_beat = self.now
        p.in_set = True
        if p.popped_tstp_at is not None:
            p.quiet = True  # written by this beat: the flag was set when TSTP was popped
        queue = self._live_signals(p.identity)
        if queue and queue.pop(0) == "TSTP" and p.popped_tstp_at is None:
            p.popped_tstp_at = self.now

    def _live_signals(self, identity: str) -> list[str]:
        if self.signals_expire.get(identity, 0.0) <= self.now:
            self.signals.pop(identity, None)
        return self.signals.setdefault(identity, [])

    def _hash_alive(self, p: FakeProcess) -> bool:
        return p.last_beat > max(0.0, p.wiped_at) and self.now - p.last_beat < 60

    # faults ---------------------------------------------------------------
    def restart_empty(self) -> None:
        """Redis crashed and came back empty: Sidekiq re-registers on its next beat."""
        self.run_id = None if self.run_id is None else f"run-{self.now}"
        self.signals.clear()
        self.signals_expire.clear()
        for p in self.procs.values():
            p.in_set = False
            p.wiped_at = self.now

    # the store port --------------------------------------------------------
    def read_fleet(
        self, *, detail: bool = True, jobs: bool = False, scope: str | None = None
    ) -> RawSnapshot:
        self.round_trips += 2
        rows = []
        for p in self.procs.values():
            info = {"hostname": "m", "pid": 1, "identity": p.identity, "version": "7.3.10"}
            fields: dict[str, str | None] = dict.fromkeys(PROCESS_FIELDS)
            if self._hash_alive(p):
                fields.update(
                    info=json.dumps(info), quiet=str(p.quiet).lower(), beat=str(p.last_beat)
                )
            rows.append(RawProcess(p.identity, fields, None, (), self.label))
        return RawSnapshot(self.label, self.now, tuple(rows), run_id=self.run_id)

    def empty_fleet_hints(self) -> EmptyFleetHints:
        return EmptyFleetHints((), {})

    def poll(
        self,
        identities: Sequence[str],
        *,
        deadline: float | None = None,
        work: Sequence[Sequence[str]] | None = None,
    ) -> Poll:
        self.round_trips += 1
        rows = []
        for ident in identities:
            p = self.procs[ident]
            if ident in self.wrong_type:
                rows.append(PollRow(None, None, None, None, None, error="WRONGTYPE"))
                continue
            alive = self._hash_alive(p)
            pttl = int((60 - (self.now - p.last_beat)) * 1000) if alive else -2
            rows.append(
                PollRow(
                    in_set=p.in_set,
                    quiet=str(p.quiet).lower() if alive else None,
                    beat=str(p.last_beat) if alive else None,
                    pttl_ms=pttl,
                    signals_len=len(self._live_signals(ident)),
                )
            )
        return Poll(int(self.now * 1000), ServerIdentity(self.run_id, None, 0), tuple(rows))

    def push_quiet(
        self,
        identities: Sequence[str],
        signal: str,
        records: Sequence[tuple[str, str, int]] = (),
        *,
        deadline: float | None = None,
        ledger: Sequence[LedgerWrite] = (),
    ) -> Push:
        self.round_trips += 1
        self.pushes.append((self.now, list(identities)))
        errors = {}
        for ident in identities:
            if ident in self.wrong_type:
                errors[ident] = "WRONGTYPE Operation against a key holding the wrong kind of value"
                continue
            self._live_signals(ident).append(signal)
            self.signals_expire[ident] = self.now + 60
        self.saved.extend(value for _, value, _ in records)
        return Push(int(self.now * 1000), errors)

    def save_records(
        self,
        records: Sequence[tuple[str, str, int]],
        *,
        deadline: float | None = None,
        ledger: Sequence[LedgerWrite] = (),
    ) -> None:
        self.saved.extend(value for _, value, _ in records)

    def mark_deploy(self, label: str, datecode: str, stamp: str) -> bool:
        self.marked.append(label)
        return True


def run(fleet: FakeFleet, **options: object) -> dict[str, tuple[Outcome, int]]:
    report = quiet_fleet(
        [fleet],
        QuietOptions(**options),  # type: ignore[arg-type]
        clock=fleet.clock,
        sleep=fleet.sleep,
    )
    return {e.process.identity: (e.outcome, e.pushes) for e in report.entries}


def test_healthy_fleet_confirms_within_one_beat() -> None:
    fleet = FakeFleet([FakeProcess(f"m:{i}:aaaaaaaaaaaa", phase=1 + i) for i in range(5)])
    fleet.sleep(12)  # everyone has beaten once
    started = fleet.now
    outcomes = run(fleet, timeout_s=30)
    assert set(outcomes.values()) == {(Outcome.CONFIRMED, 1)}
    assert fleet.now - started <= 10 + 0.5  # one beat, then at most one poll interval


def test_until_quiet_takes_one_more_beat() -> None:
    fleet = FakeFleet([FakeProcess("m:1:aaaaaaaaaaaa", phase=1)])
    fleet.sleep(2)
    started = fleet.now
    assert run(fleet, timeout_s=30, until=Until.QUIET) == {
        "m:1:aaaaaaaaaaaa": (Outcome.CONFIRMED, 1)
    }
    assert 10 < fleet.now - started <= 20 + 0.5


def test_stall_past_the_signal_ttl_is_pushed_again_and_confirmed() -> None:
    """Hung for 75 s: its hash and the signal expire; it re-registers; the second push lands."""
    proc = FakeProcess("m:1:aaaaaaaaaaaa", phase=1)
    fleet = FakeFleet([proc])
    fleet.sleep(2)
    proc.stalled_until = fleet.now + 75
    outcomes = run(fleet, timeout_s=120)
    assert outcomes == {"m:1:aaaaaaaaaaaa": (Outcome.CONFIRMED, 2)}
    assert [round(t) for t, _ in fleet.pushes] == [2, 62]


def test_process_that_never_beats_again_is_stalled_at_the_deadline() -> None:
    proc = FakeProcess("m:1:aaaaaaaaaaaa", phase=1)
    fleet = FakeFleet([proc, FakeProcess("m:2:bbbbbbbbbbbb", phase=3)])
    fleet.sleep(4)
    proc.dead = True
    started = fleet.now
    outcomes = run(fleet, timeout_s=45)
    assert outcomes["m:1:aaaaaaaaaaaa"] == (Outcome.STALLED, 1)
    assert outcomes["m:2:bbbbbbbbbbbb"] == (Outcome.CONFIRMED, 1)
    assert 45 <= fleet.now - started <= 45.5


def test_clean_exit_during_the_wait_is_vanished() -> None:
    proc = FakeProcess("m:1:aaaaaaaaaaaa", phase=1)
    fleet = FakeFleet([proc])
    fleet.sleep(2)
    proc.dead = True
    proc.exits_at = fleet.now + 3
    assert run(fleet, timeout_s=30) == {"m:1:aaaaaaaaaaaa": (Outcome.VANISHED, 1)}


def report_for(fleet: FakeFleet, **options: object) -> QuietReport:
    return quiet_fleet(
        [fleet],
        QuietOptions(**options),  # type: ignore[arg-type]
        clock=fleet.clock,
        sleep=fleet.sleep,
    )


def test_a_signal_list_of_the_wrong_type_is_a_failed_push_not_an_exit() -> None:
    fleet = FakeFleet([FakeProcess("m:1:aaaaaaaaaaaa", phase=1), FakeProcess("m:2:bbbbbbbbbbbb")])
    fleet.sleep(2)
    fleet.wrong_type.add("m:2:bbbbbbbbbbbb")
    report = report_for(fleet, timeout_s=30, release="v1")
    out = {e.process.identity: e for e in report.entries}
    assert out["m:1:aaaaaaaaaaaa"].outcome is Outcome.CONFIRMED
    assert out["m:2:bbbbbbbbbbbb"].outcome is Outcome.SIGNAL_FAILED
    assert "WRONGTYPE" in (out["m:2:bbbbbbbbbbbb"].reason or "")
    assert report.exit_code is ExitCode.NOT_CONFIRMED
    assert fleet.marked == []  # no deploy mark for a release whose quiet failed
    assert json.loads(fleet.saved[-1])["state"] == "failed"


@pytest.mark.parametrize("run_id", ["run-0", None], ids=["info", "info-refused"])
def test_redis_restarting_empty_mid_wait_is_never_counted_as_an_exit(run_id: str | None) -> None:
    """Every hash and membership vanish at once: the processes re-register on their next
    beat without the signal. They are pushed again and confirmed only when they take it,
    whether the restart shows in ``INFO`` (run_id) or only as data gone."""
    procs = [FakeProcess(f"m:{i}:aaaaaaaaaaaa", phase=1 + i) for i in range(3)]
    fleet = FakeFleet(procs)
    fleet.run_id = run_id
    fleet.sleep(5)
    restart_at = fleet.now + 0.5  # before any of them beats again
    original_sleep = fleet.sleep

    def sleep(seconds: float) -> None:
        before = fleet.now
        original_sleep(seconds)
        if before < restart_at <= fleet.now:
            fleet.restart_empty()

    report = quiet_fleet([fleet], QuietOptions(timeout_s=40), clock=fleet.clock, sleep=sleep)
    assert {e.outcome for e in report.entries} == {Outcome.CONFIRMED}
    assert all(e.pushes == 2 for e in report.entries)
    assert all(p.popped_tstp_at is not None for p in procs)
    assert report.exit_code is ExitCode.OK
    if run_id is not None:
        assert any("restarted" in n for n in report.notes)


def test_a_process_that_disappears_with_its_data_and_never_returns_is_lost() -> None:
    gone = FakeProcess("m:1:aaaaaaaaaaaa", phase=1)
    fleet = FakeFleet([gone, FakeProcess("m:2:bbbbbbbbbbbb", phase=2)])
    fleet.sleep(3)
    fleet.run_id = "run-0"
    original_sleep = fleet.sleep

    def sleep(seconds: float) -> None:
        original_sleep(seconds)
        if gone.in_set and gone.popped_tstp_at is None:
            gone.dead = True
            gone.in_set = False
            gone.wiped_at = fleet.now  # hash and membership gone, same server (no restart)

    report = quiet_fleet([fleet], QuietOptions(timeout_s=20), clock=fleet.clock, sleep=sleep)
    out = {e.process.identity: e.outcome for e in report.entries}
    assert out == {"m:1:aaaaaaaaaaaa": Outcome.LOST, "m:2:bbbbbbbbbbbb": Outcome.CONFIRMED}
    assert report.exit_code is ExitCode.NOT_CONFIRMED


def test_a_timeout_shorter_than_a_beat_is_not_confirmed_and_says_so() -> None:
    fleet = FakeFleet([FakeProcess(f"m:{i}:aaaaaaaaaaaa", phase=1 + i) for i in range(6)])
    fleet.sleep(7)
    report = report_for(fleet, timeout_s=4)
    assert Outcome.STALLED not in {e.outcome for e in report.entries}
    assert report.count(Outcome.NOT_CONFIRMED) >= 1
    assert any("shorter than one heartbeat" in n for n in report.notes)


def test_a_successful_quiet_writes_a_complete_record_and_the_mark() -> None:
    fleet = FakeFleet([FakeProcess("m:1:aaaaaaaaaaaa", phase=1)])
    fleet.sleep(2)
    report = report_for(fleet, timeout_s=30, release="v7")
    assert report.ok and fleet.marked == ["v7"]
    first, last = json.loads(fleet.saved[0]), json.loads(fleet.saved[-1])
    assert first["state"] == "pending" and last["state"] == "complete"
    record, _ = parse_deploy_record(fleet.saved[-1])  # schema 3: compact entries
    assert record is not None
    entry = record.outcomes["m:1:aaaaaaaaaaaa"]
    assert entry.outcome == "confirmed" and entry.pushes == 1
    assert entry.pushed_at is not None and entry.confirmed_at is not None
    assert entry.pushed_at <= entry.confirmed_at


class RefusingPolls(FakeFleet):
    def poll(
        self,
        identities: Sequence[str],
        *,
        deadline: float | None = None,
        work: Sequence[Sequence[str]] | None = None,
    ) -> Poll:
        raise RedisRefused("the Redis user may not run a command quiesce needs: PTTL", url="r")


def test_a_user_that_may_push_but_not_poll_is_refused_before_any_signal() -> None:
    fleet = RefusingPolls([FakeProcess("m:1:aaaaaaaaaaaa", phase=1)])
    fleet.sleep(2)
    with pytest.raises(RedisRefused, match="PTTL"):
        report_for(fleet, timeout_s=30)
    assert fleet.pushes == [] and fleet.saved == []


class OutageAfterPush(FakeFleet):
    """Redis stops answering right after the push, for ``outage_s`` seconds."""

    outage_s = 1000.0

    def poll(
        self,
        identities: Sequence[str],
        *,
        deadline: float | None = None,
        work: Sequence[Sequence[str]] | None = None,
    ) -> Poll:
        if self.pushes and self.now < self.pushes[0][0] + self.outage_s:
            raise RedisUnavailable("cannot connect to Redis: connection refused", url="r")
        return super().poll(identities, deadline=deadline)


def test_redis_gone_until_the_deadline_reports_what_was_done() -> None:
    fleet = OutageAfterPush([FakeProcess("m:1:aaaaaaaaaaaa", phase=1)])
    fleet.sleep(2)
    report = report_for(fleet, timeout_s=20, release="v1")
    assert report.exit_code is ExitCode.REDIS_UNAVAILABLE
    assert [e.outcome for e in report.entries] == [Outcome.NOT_CONFIRMED]
    assert report.deploy_id is not None and not report.record_saved
    assert fleet.marked == []


def test_a_short_outage_is_waited_out() -> None:
    fleet = OutageAfterPush([FakeProcess("m:1:aaaaaaaaaaaa", phase=1)])
    fleet.outage_s = 3
    fleet.sleep(2)
    report = report_for(fleet, timeout_s=30)
    assert report.ok and [e.outcome for e in report.entries] == [Outcome.CONFIRMED]


def test_a_flush_without_a_restart_is_never_a_delivery() -> None:
    """FLUSHALL mid-wait: same server, same run_id, every key gone. The processes re-register
    with an empty list; that is not the signal being popped."""
    procs = [FakeProcess(f"m:{i}:aaaaaaaaaaaa", phase=1 + i) for i in range(3)]
    fleet = FakeFleet(procs)
    fleet.sleep(5)
    flush_at = fleet.now + 0.5
    original_sleep = fleet.sleep

    def sleep(seconds: float) -> None:
        before = fleet.now
        original_sleep(seconds)
        if before < flush_at <= fleet.now:
            run_id = fleet.run_id
            fleet.restart_empty()
            fleet.run_id = run_id  # no restart: a flush

    report = quiet_fleet([fleet], QuietOptions(timeout_s=40), clock=fleet.clock, sleep=sleep)
    assert report.ok
    assert all(e.pushes == 2 for e in report.entries)
    assert all(p.popped_tstp_at is not None for p in procs)
