"""``quiesce quiet``: snapshot, plan, push, confirm, record.

Round trips per Redis server, whatever the fleet size: the snapshot (``SSCAN`` + one
pipeline), one pipeline for every push (plus quiesce's deploy record), then one
pipeline per poll while waiting, and two for the deploy mark. The time source and
sleep are injected so the loop can be tested without waiting.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from quiesce import __version__
from quiesce import keys as k
from quiesce.confirm import Target, Until, Verdict, apply, assess, finalize, repushed
from quiesce.decode import decode_snapshot
from quiesce.deploy import DeployRecord, OutcomeEntry, mark_stamp, new_deploy_id
from quiesce.errors import ExitCode
from quiesce.fleet import FleetSnapshot, ProcessRecord
from quiesce.plan import FAILED_OUTCOMES, Filters, Outcome, plan_quiet
from quiesce.rows import PollRow, RawSnapshot

log = logging.getLogger(__name__)

QUIET_SIGNAL = "TSTP"
"""Sidekiq's quiet signal from 5.0 on (USR1 before; USR1 kills 6.x+ processes outright)."""

POLL_INTERVAL_S = 0.4
"""Keeps the command within 0.5 s of the last confirmation."""


class FleetStore(Protocol):
    """The port ``signalling`` needs; ``quiesce.store.SidekiqStore`` implements it."""

    keys: k.Keys
    round_trips: int

    @property
    def label(self) -> str: ...

    def snapshot(
        self, *, server_info: bool = False, latest_deploy: bool = False, detail: bool = True
    ) -> RawSnapshot: ...

    def poll(self, identities: Sequence[str]) -> tuple[int, list[PollRow]]: ...

    def push_signal(
        self,
        identities: Sequence[str],
        signal: str,
        *,
        records: Sequence[tuple[str, str, int]] = (),
    ) -> int: ...

    def save(self, records: Sequence[tuple[str, str, int]]) -> None: ...

    def mark_deploy(self, label: str, datecode: str, stamp: str) -> bool: ...


@dataclasses.dataclass(frozen=True, slots=True)
class QuietOptions:
    filters: Filters = dataclasses.field(default_factory=Filters)
    until: Until = Until.DELIVERED
    timeout_s: float = 30.0
    wait: bool = True
    dry_run: bool = False
    release: str | None = None
    strategy: str = "unknown"
    mark: bool = True
    allow_newer: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Progress:
    confirmed: int
    vanished: int
    pending: int
    elapsed_s: float
    remaining_s: float


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    process: ProcessRecord
    outcome: Outcome
    pushes: int = 0
    confirmed_after_s: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class QuietReport:
    deploy_id: str | None
    options: QuietOptions
    snapshot: FleetSnapshot
    entries: tuple[Entry, ...]
    excluded: int
    elapsed_s: float
    marks: tuple[str, ...] = ()
    round_trips: int = 0

    @property
    def failures(self) -> tuple[Entry, ...]:
        return tuple(e for e in self.entries if e.outcome in FAILED_OUTCOMES)

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.NOT_CONFIRMED if self.failures else ExitCode.OK

    def count(self, outcome: Outcome) -> int:
        return sum(1 for e in self.entries if e.outcome is outcome)


def take_snapshot(
    stores: Sequence[FleetStore],
    *,
    server_info: bool = False,
    latest_deploy: bool = False,
    detail: bool = True,
    allow_newer: bool = False,
) -> FleetSnapshot:
    return FleetSnapshot.merge(
        [
            decode_snapshot(
                s.snapshot(server_info=server_info, latest_deploy=latest_deploy, detail=detail),
                allow_newer=allow_newer,
            )
            for s in stores
        ]
    )


class _Run:
    """One ``quiet`` run: holds the stores, the clock and the targets while waiting."""

    def __init__(
        self,
        stores: Sequence[FleetStore],
        options: QuietOptions,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        on_progress: Callable[[Progress], None] | None,
    ) -> None:
        self.stores = stores
        self.options = options
        self.clock = clock
        self.sleep = sleep
        self.on_progress = on_progress
        self.started = clock()
        self.targets: dict[str, list[Target]] = {s.label: [] for s in stores}

    def push(self, planned: Sequence[ProcessRecord], record: DeployRecord) -> None:
        """One pipeline per server: every push, plus the deploy record (outcomes pending)."""
        body = record.to_json()
        for store in self.stores:
            mine = [p for p in planned if p.redis == store.label]
            pushed_at = store.push_signal(
                [p.identity for p in mine],
                QUIET_SIGNAL,
                records=_record_writes(store.keys, record.deploy_id, body),
            )
            self.targets[store.label] = [
                Target(p, pushed_at_ms=pushed_at, beat_seen=p.beat) for p in mine
            ]
            log.info("pushed %s to %d processes on %s", QUIET_SIGNAL, len(mine), store.label)

    def all_targets(self) -> list[Target]:
        return [t for ts in self.targets.values() for t in ts]

    def wait(self) -> None:
        deadline = self.started + self.options.timeout_s
        while any(not t.done for t in self.all_targets()):
            remaining = deadline - self.clock()
            if remaining <= 0:
                break
            self.sleep(min(POLL_INTERVAL_S, remaining))
            for store in self.stores:
                self._poll(store)
            self._report_progress(deadline)
        for target in self.all_targets():
            if not target.done:
                finalize(target)
                log.info("%s: %s at the deadline", target.identity, target.outcome.value)

    def _poll(self, store: FleetStore) -> None:
        pending = [t for t in self.targets[store.label] if not t.done]
        if not pending:
            return
        now_ms, rows = store.poll([t.identity for t in pending])
        again: list[tuple[Target, PollRow]] = []
        for target, row in zip(pending, rows, strict=True):
            verdict = assess(target, row, now_ms, self.options.until)
            if verdict is Verdict.REPUSH:
                log.info("%s: signal expired unconsumed, pushing again", target.identity)
                again.append((target, row))
            else:
                apply(target, verdict, now_ms)
                if target.done:
                    log.info("%s: %s", target.identity, target.outcome.value)
        if again:
            pushed_at = store.push_signal([t.identity for t, _ in again], QUIET_SIGNAL)
            for target, row in again:
                repushed(target, pushed_at, row)

    def _report_progress(self, deadline: float) -> None:
        if self.on_progress is None:
            return
        targets = self.all_targets()
        now = self.clock()
        self.on_progress(
            Progress(
                confirmed=sum(1 for t in targets if t.outcome is Outcome.CONFIRMED),
                vanished=sum(1 for t in targets if t.outcome is Outcome.VANISHED),
                pending=sum(1 for t in targets if not t.done),
                elapsed_s=now - self.started,
                remaining_s=max(0.0, deadline - now),
            )
        )


def _record_writes(keys: k.Keys, deploy_id: str, body: str) -> list[tuple[str, str, int]]:
    """The record under its id and as ``latest``: serialised once, written per server."""
    return [
        (keys.deploy_record(deploy_id), body, k.DEPLOY_RECORD_TTL_S),
        (keys.latest_deploy, body, k.DEPLOY_RECORD_TTL_S),
    ]


def quiet_fleet(
    stores: Sequence[FleetStore],
    options: QuietOptions,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_progress: Callable[[Progress], None] | None = None,
) -> QuietReport:
    run = _Run(stores, options, clock, sleep, on_progress)
    fleet = take_snapshot(
        stores, server_info=not options.dry_run, detail=False, allow_newer=options.allow_newer
    )
    plan = plan_quiet(fleet, options.filters)
    skipped = tuple(Entry(p, o) for p, o in plan.skipped)

    def report(
        entries: tuple[Entry, ...], deploy_id: str | None, marks: tuple[str, ...] = ()
    ) -> QuietReport:
        return QuietReport(
            deploy_id=deploy_id,
            options=options,
            snapshot=fleet,
            entries=entries + skipped,
            excluded=plan.excluded,
            elapsed_s=clock() - run.started,
            marks=marks,
            round_trips=sum(s.round_trips for s in stores),
        )

    if options.dry_run:
        return report(tuple(Entry(p, Outcome.PLANNED) for p in plan.targets), None)

    record = DeployRecord.start(
        deploy_id=new_deploy_id(fleet.taken_at, secrets.token_hex(3)),
        release=options.release,
        strategy=options.strategy,
        started_at=fleet.taken_at,
        until=options.until.value,
        timeout_s=options.timeout_s,
        processes=fleet.processes,
        servers=fleet.servers,
        quiesce_version=__version__,
    )
    first = Outcome.PENDING if options.wait else Outcome.SIGNALLED
    # pushed_at is provisional (the snapshot's time, no later than the push) until the wait ends.
    record = record.with_outcomes(
        {p.identity: OutcomeEntry(o.value) for p, o in plan.skipped}
        | {p.identity: OutcomeEntry(first.value, fleet.taken_at, pushes=1) for p in plan.targets}
    )
    if not options.wait:  # written once, with the pushes: final as it is
        record = record.finish(fleet.taken_at)
    run.push(plan.targets, record)
    marks = _mark(stores, options, fleet.taken_at)
    if not options.wait:  # the record written with the pushes is already final
        return report(
            tuple(_entry(t, waited=False) for t in run.all_targets()), record.deploy_id, marks
        )
    run.wait()
    entries = tuple(_entry(t, options.wait) for t in run.all_targets())
    record = record.with_outcomes(
        {
            target.identity: OutcomeEntry(
                entry.outcome.value,
                pushed_at=target.pushed_at_ms / 1000.0,
                confirmed_at=target.confirmed_at_ms / 1000.0 if target.confirmed_at_ms else None,
                pushes=target.pushes,
            )
            for target, entry in zip(run.all_targets(), entries, strict=True)
        }
    ).finish(fleet.taken_at + (clock() - run.started))
    body = record.to_json()
    for store in stores:
        store.save(_record_writes(store.keys, record.deploy_id, body))
    return report(entries, record.deploy_id, marks)


def _entry(target: Target, waited: bool) -> Entry:
    outcome = target.outcome if waited else Outcome.SIGNALLED
    after = None
    if target.confirmed_at_ms is not None:
        after = max(0.0, (target.confirmed_at_ms - target.pushed_at_ms) / 1000.0)
    return Entry(target.record, outcome, target.pushes, after)


def _mark(stores: Sequence[FleetStore], options: QuietOptions, now: float) -> tuple[str, ...]:
    if not options.mark or not options.release:
        return ()
    datecode, stamp = mark_stamp(now)
    release = options.release
    return tuple(
        f"{s.label}: " + ("written" if s.mark_deploy(release, datecode, stamp) else "exists")
        for s in stores
    )
