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

from quiesce.confirm import Until
from quiesce.keys import PROCESS_FIELDS, Keys
from quiesce.plan import Outcome
from quiesce.rows import PollRow, RawProcess, RawSnapshot
from quiesce.signalling import QuietOptions, quiet_fleet


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
        return p.in_set and not p.dead

    def _next_beat(self, p: FakeProcess) -> float:
        t = p.last_beat + p.interval if p.last_beat else p.phase
        return max(t, p.stalled_until)

    def _beat(self, p: FakeProcess) -> None:
        p.last_beat = self.now
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
        return p.last_beat > 0 and self.now - p.last_beat < 60

    # the store port --------------------------------------------------------
    def snapshot(
        self, *, server_info: bool = False, latest_deploy: bool = False, detail: bool = True
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
        return RawSnapshot(self.label, self.now, tuple(rows))

    def poll(self, identities: Sequence[str]) -> tuple[int, list[PollRow]]:
        self.round_trips += 1
        rows = []
        for ident in identities:
            p = self.procs[ident]
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
        return int(self.now * 1000), rows

    def push_signal(
        self,
        identities: Sequence[str],
        signal: str,
        *,
        records: Sequence[tuple[str, str, int]] = (),
    ) -> int:
        self.round_trips += 1
        self.pushes.append((self.now, list(identities)))
        for ident in identities:
            self._live_signals(ident).append(signal)
            self.signals_expire[ident] = self.now + 60
        return int(self.now * 1000)

    def save(self, records: Sequence[tuple[str, str, int]]) -> None:
        self.saved.extend(value for _, value, _ in records)

    def mark_deploy(self, label: str, datecode: str, stamp: str) -> bool:
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


def test_process_that_never_comes_back_is_stalled_at_the_deadline() -> None:
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


@pytest.mark.parametrize("count", [1, 300])
def test_round_trips_do_not_grow_with_the_fleet(count: int) -> None:
    fleet = FakeFleet([FakeProcess(f"m:{i}:aaaaaaaaaaaa", phase=1 + i % 10) for i in range(count)])
    fleet.sleep(11)
    fleet.round_trips = 0
    run(fleet, timeout_s=30, wait=False)
    assert fleet.round_trips == 3  # snapshot (2) + one push pipeline
