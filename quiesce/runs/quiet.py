"""``quiesce quiet``: read, plan, check, push, confirm, record, mark.

Round trips per Redis server, whatever the fleet size: the snapshot (``SSCAN`` + one
pipeline), one dry run of the poll (so a Redis user that may push but not poll is
found before any signal goes out), one atomic push with quiesce's deploy record, one
pipeline per poll while waiting, one to save the outcome, and two for the deploy mark.

What the verdict guarantees: exit 0 only when every target confirmed (a beat popped
the signal, or the process reports quiet) or really exited (left the registry while
its hash lingers, as Sidekiq's clean shutdown does). A Redis that restarts empty or
fails over mid-wait is detected (its ``run_id`` changes, or a target disappears with
its hash); pending targets are pushed again, so a process that re-registers without
the signal is never counted. If signals went out and the run then fails, the report
still says what was done, the record says ``failed``, and no deploy mark is written.
The time source and sleep are injected so the loop can be tested without waiting.

``--until drained`` (``confirm``, ``drain``) then waits for the running jobs: the poll
pipeline also reads ``busy`` and the work hash, so it stays one round trip; processes
already quiet are waited for without a new signal, and a timeout lists the jobs left.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from quiesce import __version__
from quiesce.errors import (
    ConfigError,
    ExitCode,
    QuiesceError,
    RedisProblem,
    RedisUnavailable,
)
from quiesce.model.drain import Grace, advice, drain_plan, longest
from quiesce.model.fleet import ProcessRecord
from quiesce.model.quiet import FAILED_OUTCOMES, Filters, Outcome, QuietPlan, plan_quiet
from quiesce.model.record import DeployRecord, OutcomeEntry, mark_stamp, new_deploy_id
from quiesce.model.report import (
    Event,
    Notice,
    ProcessOutcome,
    Progress,
    Pushed,
    QuietOptions,
    QuietReport,
)
from quiesce.model.snapshot import FleetSnapshot
from quiesce.model.verdict import (
    Target,
    Until,
    Verdict,
    assess,
    finalize,
    push_refused,
    pushed,
    server_lost_data,
    settle,
)
from quiesce.runs.read import FleetReader, empty_fleet_notes, observe
from quiesce.sidekiq import keys as k
from quiesce.sidekiq.rows import Poll, Push
from quiesce.sidekiq.work import longest_first, work_suffixes

log = logging.getLogger(__name__)

QUIET_SIGNAL = "TSTP"
"""Sidekiq's quiet signal from 5.0 on (USR1 before; USR1 kills 6.x+ processes outright)."""

POLL_INTERVAL_S = 0.4
"""Keeps the command within 0.5 s of the last confirmation."""


class FleetStore(FleetReader, Protocol):
    """The port the quiet run needs; ``quiesce.adapters.redis.store.SidekiqStore`` implements it."""

    def poll(
        self,
        identities: Sequence[str],
        *,
        deadline: float | None = None,
        work: Sequence[Sequence[str]] | None = None,
    ) -> Poll: ...

    def push_quiet(
        self,
        identities: Sequence[str],
        signal: str,
        records: Sequence[tuple[str, str, int]] = (),
        *,
        deadline: float | None = None,
    ) -> Push: ...

    def save_records(
        self, records: Sequence[tuple[str, str, int]], *, deadline: float | None = None
    ) -> None: ...

    def mark_deploy(self, label: str, datecode: str, stamp: str) -> bool: ...


class QuietRun:
    """One ``quiet`` run: the stores, the clock and every target's state while waiting."""

    def __init__(
        self,
        stores: Sequence[FleetStore],
        options: QuietOptions,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        on_event: Callable[[Event], None] | None,
    ) -> None:
        self.stores = stores
        self.options = options
        self.clock = clock
        self.sleep = sleep
        self.on_event = on_event or (lambda event: None)
        self.started = clock()
        self.deadline = self.started + options.timeout_s
        self.targets: dict[str, list[Target]] = {s.label: [] for s in stores}
        self.run_ids: dict[str, str | None] = {}
        self.unreachable: dict[str, QuiesceError] = {}
        self.notes: list[str] = []
        self.error: QuiesceError | None = None

    def note(self, text: str) -> None:
        log.info("%s", text)  # the caller prints notices (on_event): not twice
        self.notes.append(text)
        self.on_event(Notice(text))

    def store_deadline(self) -> float:
        """The wait's deadline on ``time.monotonic`` (the store's clock for retries)."""
        return time.monotonic() + max(0.0, self.deadline - self.clock())

    def all_targets(self) -> list[Target]:
        return [t for ts in self.targets.values() for t in ts]

    # -- before any signal ------------------------------------------------------------
    def preflight(self, planned: Sequence[ProcessRecord]) -> None:
        """Run the poll once, read-only: a Redis user that may push but not poll (no
        ``PTTL``, say) is refused here, before a signal goes out, not after."""
        for store in self.stores:
            mine = [p.identity for p in planned if p.redis == store.label]
            if mine:
                store.poll(mine)

    # -- pushing ----------------------------------------------------------------------
    def push(
        self,
        store: FleetStore,
        targets: Sequence[Target],
        records: Sequence[tuple[str, str, int]] = (),
    ) -> bool:
        """Push TSTP to ``targets`` (and write ``records``) in one atomic round trip.

        False when Redis could not be reached: the targets stay owed a push and the wait
        tries again. A refusal (ACL, ``maxmemory``, auth) raises: nothing went in.
        """
        # Draining also waits for processes that were quiet already: nothing to send them.
        targets = [t for t in targets if not t.record.quiet]
        if not targets and not records:
            return True
        try:
            result = store.push_quiet(
                [t.identity for t in targets],
                QUIET_SIGNAL,
                records,
                deadline=self.store_deadline(),
            )
        except RedisUnavailable as exc:
            self._unreachable(store, exc)
            return False
        updated = {}
        for t in targets:
            reason = result.errors.get(t.identity)
            if reason is not None:
                updated[t.identity] = push_refused(t, f"Redis refused the push: {reason}")
                log.warning("%s: push refused: %s", t.identity, reason)
            else:
                updated[t.identity] = pushed(t, result.pushed_at_ms)
        self.targets[store.label] = [updated.get(t.identity, t) for t in self.targets[store.label]]
        log.info("pushed %s to %d processes on %s", QUIET_SIGNAL, len(targets), store.label)
        return True

    # -- waiting ----------------------------------------------------------------------
    def wait(self) -> None:
        try:
            while self.error is None and any(not t.done for t in self.all_targets()):
                remaining = self.deadline - self.clock()
                if remaining <= 0:
                    break
                self.sleep(min(POLL_INTERVAL_S, remaining))
                for store in self.stores:
                    if self.error is None:
                        self._poll(store)
                self._progress()
        except KeyboardInterrupt:
            self.error = Interrupted("interrupted while waiting for confirmations")

    def _poll(self, store: FleetStore) -> None:
        pending = [t for t in self.targets[store.label] if not t.done]
        if not pending:
            return
        work = None
        if self.options.until is Until.DRAINED:
            work = [_suffixes(t.record) for t in pending]
        try:
            poll = store.poll(
                [t.identity for t in pending], deadline=self.store_deadline(), work=work
            )
        except RedisUnavailable as exc:
            self._unreachable(store, exc)
            return
        except QuiesceError as exc:  # refused, or no longer Sidekiq's shape: it won't pass
            self.error = exc
            return
        was_unreachable = self.unreachable.pop(store.label, None) is not None
        if self._server_changed(store.label, poll.server.run_id, was_unreachable):
            self._restarted(store)
            return
        owed: list[Target] = []
        by_identity: dict[str, Target] = {}
        for target, row in zip(pending, poll.rows, strict=True):
            seen, verdict = assess(target, row, poll.now_ms, self.options.until)
            if verdict is Verdict.PUSH:
                log.info("%s: pushing again (%s)", seen.identity, _why_again(target, seen))
                owed.append(seen)
            seen = settle(seen, verdict)
            if seen.done:
                log.info("%s: %s", seen.identity, seen.outcome.value)
            by_identity[seen.identity] = seen
        self.targets[store.label] = [
            by_identity.get(t.identity, t) for t in self.targets[store.label]
        ]
        if owed:
            self.push(store, owed)

    def _server_changed(self, label: str, run_id: str | None, was_unreachable: bool) -> bool:
        known = self.run_ids.get(label)
        if run_id is not None:
            self.run_ids[label] = run_id
            return known is not None and known != run_id
        # No run_id (INFO refused): after an outage, assume the worst and push again.
        return was_unreachable

    def _restarted(self, store: FleetStore) -> None:
        self.note(
            f"{store.label}: Redis restarted or failed over during the wait (its data may be "
            "lost): pushing TSTP again to every process not yet confirmed"
        )
        self.targets[store.label] = [server_lost_data(t) for t in self.targets[store.label]]
        owed = [t for t in self.targets[store.label] if not t.done]
        if owed:
            self.push(store, owed)

    def _unreachable(self, store: FleetStore, exc: QuiesceError) -> None:
        if store.label not in self.unreachable:
            self.note(f"{exc}; retrying until the deadline")
        self.unreachable[store.label] = exc

    def _progress(self) -> None:
        targets = self.all_targets()
        now = self.clock()
        busy = [t for t in targets if not t.done]
        top = longest(j for t in busy for j in t.work.jobs)
        self.on_event(
            Progress(
                confirmed=sum(1 for t in targets if t.outcome is Outcome.CONFIRMED),
                vanished=sum(1 for t in targets if t.outcome is Outcome.VANISHED),
                pending=len(busy),
                elapsed_s=now - self.started,
                remaining_s=max(0.0, self.deadline - now),
                drained=sum(1 for t in targets if t.outcome is Outcome.DRAINED),
                jobs=sum(max(t.busy or 0, t.work.entries) for t in busy),
                longest_s=top.runtime_s if top is not None else None,
            )
        )

    def finish(self) -> None:
        for label, targets in self.targets.items():
            self.targets[label] = [finalize(t) for t in targets]
        if self.unreachable and self.error is None:
            self.error = next(iter(self.unreachable.values()))


class Interrupted(QuiesceError):
    exit_code = ExitCode.INTERRUPTED


def _why_again(before: Target, after: Target) -> str:
    if before.pushed_at_ms is None:
        return "owed a push"
    if before.lost_after_push:
        return "back after it vanished with its data since the push"
    return "the signal expired unconsumed"


def _record_writes(keys: k.Keys, deploy_id: str, body: str) -> list[tuple[str, str, int]]:
    """The record under its id and as ``latest``: serialised once, written per server."""
    return [
        (keys.deploy_record(deploy_id), body, k.DEPLOY_RECORD_TTL_S),
        (keys.latest_deploy, body, k.DEPLOY_RECORD_TTL_S),
    ]


def _check_plan(plan: QuietPlan, fleet: FleetSnapshot, filters: Filters) -> None:
    """Filters that leave nothing of a live fleet are a typo, not an empty fleet."""
    live = [p for p in fleet.processes if p.alive]
    if not live or plan.targets or plan.skipped or not filters.active:
        return
    raise ConfigError(
        f"the filters match none of the {len(live)} live processes; "
        + "; ".join(_existing_values(live))
    )


def _existing_values(live: Sequence[ProcessRecord]) -> list[str]:
    def few(values: set[str]) -> str:
        shown = sorted(v for v in values if v)[:8]
        more = len(values) - len(shown)
        return ", ".join(shown) + (f" (+{more} more)" if more > 0 else "") or "(none)"

    return [
        f"tags: {few({p.tag for p in live})}",
        f"labels: {few({x for p in live for x in p.labels})}",
        f"hostnames: {few({p.hostname for p in live})}",
    ]


def quiet_fleet(
    stores: Sequence[FleetStore],
    options: QuietOptions,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_event: Callable[[Event], None] | None = None,
) -> QuietReport:
    run = QuietRun(stores, options, clock, sleep, on_event)
    observed = observe(
        stores, detail=False, allow_newer=options.allow_newer, jobs=options.reads_jobs
    )
    fleet = observed.fleet
    run.run_ids.update(observed.run_ids)
    plan = plan_quiet(fleet, options.filters)
    _check_plan(plan, fleet, options.filters)
    if options.until is Until.DRAINED:
        plan = drain_plan(plan)
    skipped = tuple(ProcessOutcome(p, o, reason=p.problem) for p, o in plan.skipped)

    def report(
        entries: tuple[ProcessOutcome, ...],
        deploy_id: str | None,
        marks: tuple[str, ...] = (),
        record_saved: bool = True,
        advice: tuple[str, ...] = (),
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
            notes=tuple(run.notes),
            error=run.error,
            record_saved=record_saved,
            excluded_by=plan.excluded_by,
            advice=advice,
        )

    if not any(p.alive for p in fleet.processes):
        for text in empty_fleet_notes(stores, default_url=options.default_url):
            run.notes.append(text)
        return report((), None)
    if options.before_push is not None:
        options.before_push(fleet)
    if options.dry_run:
        return report(tuple(ProcessOutcome(p, Outcome.PLANNED) for p in plan.targets), None)
    if not plan.targets:
        return report((), None)

    if options.wait:
        # Only the wait polls: without it the plan's probe (``read_fleet``) has already
        # asked for what this would, and at 10,000 processes it was a quarter of the run.
        run.preflight(plan.targets)
    _warn_short_timeout(run, plan.targets)
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
    # pushed_at stays unknown until the push returns: the final record has it exactly.
    record = record.with_outcomes(
        {p.identity: OutcomeEntry(o.value) for p, o in plan.skipped}
        | {p.identity: OutcomeEntry(Outcome.PENDING.value) for p in plan.targets}
    )
    for store in stores:
        run.targets[store.label] = [Target(p) for p in plan.targets if p.redis == store.label]
    body = record.to_json()
    _first_push(run, record.deploy_id, body)
    signalled = [p for p in plan.targets if not p.quiet]
    run.on_event(Pushed(len(signalled), len({p.machine for p in signalled})))
    if options.wait:
        run.wait()
    elif run.unreachable:
        run.error = next(iter(run.unreachable.values()))
    run.finish()
    entries = tuple(_outcome(t, options.wait) for t in run.all_targets())
    record = record.with_outcomes(
        {
            target.identity: OutcomeEntry(
                entry.outcome.value,
                pushed_at=_seconds(target.pushed_at_ms),
                confirmed_at=_seconds(target.confirmed_at_ms),
                pushes=target.pushes,
            )
            for target, entry in zip(run.all_targets(), entries, strict=True)
        }
    )
    failed = run.error is not None or any(e.outcome in FAILED_OUTCOMES for e in entries)
    failure = _failure_text(run.error, entries) if failed else None
    record = record.finish(fleet.taken_at + (clock() - run.started), failure=failure)
    saved = _save(run, record.deploy_id, record.to_json())
    marks = () if failed else _mark(run, options, fleet.taken_at)
    return report(entries, record.deploy_id, marks, saved, _advice(options, plan, entries))


def _suffixes(record: ProcessRecord) -> tuple[str, ...]:
    version = record.version
    return work_suffixes(version.text if version else None, bool(version and version.inferred))


def _advice(
    options: QuietOptions, plan: QuietPlan, entries: Sequence[ProcessOutcome]
) -> tuple[str, ...]:
    """On a drain that timed out, or whenever ``--kill-timeout`` is given."""
    grace = Grace(options.kill_timeout_s, options.sidekiq_timeout_s)
    still = [j for e in entries if e.outcome is Outcome.STILL_BUSY for j in e.jobs]
    if still:
        jobs = sorted(still, key=longest_first)
        return tuple(advice(jobs, grace, timed_out=True, drain_timeout_s=options.timeout_s))
    if options.kill_timeout_s is None:
        return ()
    # The jobs seen running: at the start on every target, and at the last poll.
    seen = {(j.identity, j.tid, j.jid): j for p in plan.targets if p.work for j in p.work.jobs}
    seen.update({(j.identity, j.tid, j.jid): j for e in entries for j in e.jobs})
    jobs = sorted(seen.values(), key=longest_first)
    return tuple(advice(jobs, grace, timed_out=False, drain_timeout_s=options.timeout_s))


def _failure_text(error: QuiesceError | None, entries: Sequence[ProcessOutcome]) -> str:
    if error is not None:
        return str(error)
    n = sum(1 for e in entries if e.outcome in FAILED_OUTCOMES)
    busy = sum(1 for e in entries if e.outcome is Outcome.STILL_BUSY)
    if busy == n:
        return f"{n} process{'es' if n != 1 else ''} still running jobs at the deadline"
    return f"{n} process{'es' if n != 1 else ''} not confirmed quiet"


def _first_push(run: QuietRun, deploy_id: str, body: str) -> None:
    """Every server's atomic push, with the record. A refusal before any signal went
    out is an ordinary error; after some server took its pushes, it ends the run."""
    done_any = False
    for store in run.stores:
        targets = run.targets[store.label]
        try:
            run.push(store, targets, _record_writes(store.keys, deploy_id, body))
        except RedisProblem as exc:
            if not done_any:
                raise type(exc)(f"{exc.reason}; nothing was signalled", url=exc.url) from exc
            run.error = exc
            return
        except QuiesceError as exc:
            if not done_any:
                raise
            run.error = exc
            return
        done_any = True


def _save(run: QuietRun, deploy_id: str, body: str) -> bool:
    """Write the final record, once per server, never past the deadline plus one attempt;
    a server that was unreachable at the end is not waited for again."""
    saved = True
    for store in run.stores:
        if store.label in run.unreachable:
            saved = False
            continue
        try:
            # A deadline already past: one attempt, no retries (the wait's time is spent).
            store.save_records(_record_writes(store.keys, deploy_id, body), deadline=0.0)
        except QuiesceError as exc:
            log.warning("could not save the deploy record on %s: %s", store.label, exc)
            saved = False
    return saved


def _warn_short_timeout(run: QuietRun, targets: Sequence[ProcessRecord]) -> None:
    if not run.options.wait:
        return
    beats = 1 if run.options.until is Until.DELIVERED else 2
    need = max(p.beat_interval_s for p in targets) * beats
    if run.options.timeout_s < need:
        what = "one heartbeat" if beats == 1 else "two heartbeats"
        run.note(
            f"--timeout {run.options.timeout_s:g}s is shorter than {what} of these processes "
            f"({need:g}s): some cannot confirm in time"
        )


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000.0


def _outcome(target: Target, waited: bool) -> ProcessOutcome:
    outcome = target.outcome
    if not waited and outcome in (Outcome.PENDING, Outcome.NOT_CONFIRMED):
        outcome = Outcome.SIGNALLED if target.pushes else Outcome.NOT_SIGNALLED
    after = None
    if target.confirmed_at_ms is not None and target.pushed_at_ms is not None:
        after = max(0.0, (target.confirmed_at_ms - target.pushed_at_ms) / 1000.0)
    reason = target.problem
    if outcome is Outcome.VANISHED and target.running:
        n = max(target.busy or 0, target.work.entries)
        reason = (
            f"exited while draining; its last beat showed {n} running job{'s' if n != 1 else ''}"
            " (finished, or pushed back to the queue by Sidekiq's shutdown)"
        )
    elif outcome is Outcome.STILL_BUSY:
        n = max(target.busy or 0, target.work.entries)
        top = longest(target.work.jobs)
        runtime = f", the longest for {top.runtime_s:.0f}s" if top and top.runtime_s else ""
        reason = f"{n} job{'s' if n != 1 else ''} running{runtime}"
    return ProcessOutcome(
        target.record,
        outcome,
        target.pushes,
        after,
        reason,
        jobs=target.work.jobs,
        busy=target.busy,
    )


def _mark(run: QuietRun, options: QuietOptions, now: float) -> tuple[str, ...]:
    """Sidekiq's deploy mark, once the quiet succeeded. A mark Redis refuses is said, not
    fatal: the fleet is quiet, which is what the deploy gate is about."""
    if not options.mark or not options.release:
        return ()
    datecode, stamp = mark_stamp(now)
    marks = []
    for store in run.stores:
        try:
            written = store.mark_deploy(options.release, datecode, stamp)
        except QuiesceError as exc:
            run.note(f"deploy mark not written: {exc}")
            continue
        marks.append(f"{store.label}: " + ("written" if written else "exists"))
    return tuple(marks)
