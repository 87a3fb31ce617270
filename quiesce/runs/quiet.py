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

import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from quiesce import __version__
from quiesce.errors import (
    ConfigError,
    Interrupted,
    QuiesceError,
    RedisProblem,
    RedisUnavailable,
)
from quiesce.model.drain import Grace, advice, drain_plan, longest
from quiesce.model.filters import Filters, scope_of, unmatched_filters
from quiesce.model.fleet import ProcessRecord
from quiesce.model.ledger import LEDGER_SIZE, quiet_since_any
from quiesce.model.machines import FlyMachine
from quiesce.model.quiet import (
    FAILED_OUTCOMES,
    Outcome,
    QuietPlan,
    live_targets,
    plan_quiet,
    shrink_warning,
)
from quiesce.model.record import DeployRecord, mark_stamp, new_deploy_id
from quiesce.model.record_entries import FlyTarget, MachineEntry, OutcomeEntry
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
from quiesce.runs.read import FleetReader, look_elsewhere, observe
from quiesce.sidekiq import keys as k
from quiesce.sidekiq.rows import LedgerWrite, Poll, Push
from quiesce.sidekiq.versions import QUIET_SIGNAL
from quiesce.sidekiq.work import longest_first, work_suffixes
from quiesce.text import plural

log = logging.getLogger(__name__)

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
        ledger: Sequence[LedgerWrite] = (),
    ) -> Push: ...

    def save_records(
        self,
        records: Sequence[tuple[str, str, int]],
        *,
        deadline: float | None = None,
        ledger: Sequence[LedgerWrite] = (),
    ) -> None: ...

    def mark_deploy(self, label: str, datecode: str, stamp: str) -> bool: ...


class FlyReader(Protocol):
    """What the quiet needs of Fly; ``quiesce.adapters.fly.FlyClient`` implements it."""

    app: str

    def list_machines(
        self, process_group: str | None = None, *, budget_s: float | None = None
    ) -> list[FlyMachine]: ...

    def get_machine(self, machine_id: str, *, budget_s: float | None = None) -> FlyMachine: ...


FLY_BUDGET_S = 15.0
"""Most time the quiet gives Fly (Machine list, then the release Machine), retries
included: the signal is out already, and the wait must not lose much to a hung API."""


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
        self.listening = on_event is not None
        self.started = clock()
        self.deadline = self.started + options.timeout_s
        self.targets: dict[str, list[Target]] = {s.label: [] for s in stores}
        self.run_ids: dict[str, str | None] = {}
        self.unreachable: dict[str, QuiesceError] = {}
        self.notes: list[str] = []
        self.error: QuiesceError | None = None

    def note(self, text: str) -> None:
        if not self.listening:  # a listener prints notices itself: -v must not say them twice
            log.info("%s", text)
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
        ledger: Sequence[LedgerWrite] = (),
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
                ledger=ledger,
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
        # An overdue process's last hash lists jobs nothing may still be running.
        busy = [t for t in targets if not t.done]
        live = [t for t in busy if not t.overdue]
        top = longest(j for t in live for j in t.work.jobs)
        self.on_event(
            Progress(
                confirmed=sum(1 for t in targets if t.outcome is Outcome.CONFIRMED),
                vanished=sum(1 for t in targets if t.outcome is Outcome.VANISHED),
                pending=len(busy),
                elapsed_s=now - self.started,
                remaining_s=max(0.0, self.deadline - now),
                drained=sum(1 for t in targets if t.outcome is Outcome.DRAINED),
                jobs=sum(max(t.busy or 0, t.work.entries) for t in live),
                stalled=len(busy) - len(live),
                longest_s=top.runtime_s if top is not None else None,
            )
        )

    def finish(self) -> None:
        for label, targets in self.targets.items():
            self.targets[label] = [finalize(t) for t in targets]
        if self.unreachable and self.error is None:
            self.error = next(iter(self.unreachable.values()))


def _why_again(before: Target, after: Target) -> str:
    if before.pushed_at_ms is None:
        return "owed a push"
    if before.lost_after_push:
        return "back after it vanished with its data since the push"
    return "the signal expired unconsumed"


def _record_writes(keys: k.Keys, body: str) -> list[tuple[str, str, int]]:
    """The record as ``latest``, for quiesce before the ledger (serialised once, written
    per server). The ledger holds it under its id: no ``quiesce:deploy:<id>`` copy any
    more (nothing read it, and at 10,000 processes each held 1 MB for 14 days)."""
    return [(keys.latest_deploy, body, k.DEPLOY_RECORD_TTL_S)]


def _ledger_writes(
    keys: k.Keys, record: DeployRecord, body: str, fleet: FleetSnapshot
) -> list[LedgerWrite]:
    """The record into its scope's history, dropping what the history no longer keeps:
    with this one added, ``LEDGER_SIZE`` records at most."""
    oldest = [r.deploy_id for r in fleet.history[LEDGER_SIZE - 1 :]]
    drop = tuple(dict.fromkeys([*fleet.ledger_drop, *oldest]))
    return [
        LedgerWrite(keys.ledger(record.scope), record.deploy_id, body, k.DEPLOY_RECORD_TTL_S, drop)
    ]


def _check_plan(plan: QuietPlan, fleet: FleetSnapshot, filters: Filters) -> None:
    problem = unmatched_filters(fleet.processes, filters)
    if problem is not None:
        raise ConfigError(problem)


def _check_target(
    run: QuietRun, plan: QuietPlan, fleet: FleetSnapshot, stores: Sequence[FleetStore]
) -> None:
    """Before anything is signalled or written: an empty target beside a live fleet it
    does not read (another namespace or database) is a wrong target, exit 2; fewer live
    targets than ``--min-processes`` too. Far fewer than the scope's last deploy is said."""
    options = run.options
    live = live_targets(plan)
    if not any(p.alive for p in fleet.processes):
        found = look_elsewhere(stores, default_url=options.default_url)
        if found.fleets and not options.allow_empty:
            read = ", ".join(f"{s.keys.processes} on {s.label}" for s in stores)
            raise ConfigError(
                f"no live Sidekiq process in {read}, but a live fleet is elsewhere: "
                + "; ".join(found.fleets)
                + "; check --namespace and the database in the Redis URL (nothing was "
                "signalled or written; --allow-empty deploys anyway)"
            )
        run.notes.extend(f"a live Sidekiq fleet is elsewhere: {f}" for f in found.fleets)
        run.notes.extend(found.notes)
    if options.min_processes is not None and live < options.min_processes:
        raise ConfigError(
            f"--min-processes {options.min_processes}: only {live} live "
            f"process{'es' if live != 1 else ''} to quiet (nothing was signalled or written)"
        )
    previous = None if fleet.legacy_history else fleet.latest_deploy
    warning = shrink_warning(previous, live)
    if warning is not None:
        (run.note if plan.targets else run.notes.append)(warning)


def quiet_fleet(
    stores: Sequence[FleetStore],
    options: QuietOptions,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_event: Callable[[Event], None] | None = None,
    fly: FlyReader | None = None,
) -> QuietReport:
    """``fly``: the app's Machines API, when a token and the app are known (what it says
    is recorded; when it fails the quiet goes on, ``fly_checked`` false)."""
    run = QuietRun(stores, options, clock, sleep, on_event)
    scope = options.scope or scope_of(
        None, stores[0].keys.namespace if stores else "", options.filters
    )
    observed = observe(
        stores,
        detail=False,
        allow_newer=options.allow_newer,
        jobs=options.reads_jobs,
        scope=scope,
    )
    fleet = observed.fleet
    run.run_ids.update(observed.run_ids)
    plan = plan_quiet(fleet, options.filters)
    _check_plan(plan, fleet, options.filters)
    _check_target(run, plan, fleet, stores)
    if options.until is Until.DRAINED:
        plan = drain_plan(plan)
    _log_plan(plan)
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

    live = any(p.alive for p in fleet.processes)
    if live and options.before_push is not None:
        options.before_push(fleet)
    if options.dry_run:
        return report(tuple(ProcessOutcome(p, Outcome.PLANNED) for p in plan.targets), None)

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
        scope=scope,
    )
    # pushed_at stays unknown until the push returns: the final record has it exactly.
    record = record.with_outcomes(
        {p.identity: _skipped_entry(p, o, fleet) for p, o in plan.skipped}
        | {p.identity: OutcomeEntry(Outcome.PENDING.value) for p in plan.targets}
    )
    if not plan.targets:
        # Nothing to signal (a retried deploy finds every process quiet; a first deploy
        # finds none): the record is still written, so later commands judge this deploy.
        record = _with_fly(run, record, fly)
        _save_now(stores, record.finish(fleet.taken_at + (clock() - run.started)), fleet)
        marks = _mark(run, options, fleet.taken_at) if live else ()
        return report((), record.deploy_id, marks)

    if options.wait:
        # Only the wait polls: without it the plan's probe (``read_fleet``) has already
        # asked for what this would, and at 10,000 processes it was a sixth of the run.
        run.preflight(plan.targets)
    _warn_short_timeout(run, plan.targets)
    for store in stores:
        run.targets[store.label] = [Target(p) for p in plan.targets if p.redis == store.label]
    body = record.to_json()
    _first_push(run, record, body, fleet)
    signalled = [p for p in plan.targets if not p.quiet]
    run.on_event(Pushed(len(signalled), len({p.machine for p in signalled})))
    # Fly after the push: the signal matters more, and flyctl changes no Machine while
    # the release command runs, so the list is the same before and after.
    fly_read = _FlyInBackground(run, fly)
    if options.wait:
        run.wait()
    elif run.unreachable:
        run.error = next(iter(run.unreachable.values()))
    record = fly_read.apply(record)
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
    saved = _save(run, record, record.to_json(), fleet)
    marks = () if failed else _mark(run, options, fleet.taken_at)
    _work_notes(run)
    advice = _advice(options, plan, entries, interrupted=isinstance(run.error, Interrupted))
    return report(entries, record.deploy_id, marks, saved, advice)


def _log_plan(plan: QuietPlan) -> None:
    """``-v``: the decision for every process, before anything is written."""
    for proc in plan.targets:
        why = "already quiet: waiting for its jobs" if proc.quiet else f"{proc.state.value}"
        log.info("%s: target (%s)", proc.identity, why)
    for proc, outcome in plan.skipped:
        reason = f": {proc.problem}" if proc.problem else ""
        log.info("%s: skipped, %s%s", proc.identity, outcome.value, reason)
    for option, n in plan.excluded_by:
        log.info("excluded by %s: %d", option, n)


def _work_notes(run: QuietRun) -> None:
    """A work hash that could not be read is said once per process: it is no failure."""
    for target in run.all_targets():
        if target.work_note is not None:
            run.note(f"{target.identity}: {target.work_note}")


def _suffixes(record: ProcessRecord) -> tuple[str, ...]:
    version = record.version
    return work_suffixes(version.text if version else None, bool(version and version.inferred))


def _advice(
    options: QuietOptions,
    plan: QuietPlan,
    entries: Sequence[ProcessOutcome],
    *,
    interrupted: bool = False,
) -> tuple[str, ...]:
    """On a drain that timed out, or whenever ``--kill-timeout`` is given."""
    interval = max((p.beat_interval_s for p in plan.targets), default=10.0)
    grace = Grace(options.kill_timeout_s, options.sidekiq_timeout_s, interval)
    still = [j for e in entries if e.outcome is Outcome.STILL_BUSY for j in e.jobs]
    if still:
        jobs = sorted(still, key=longest_first)
        return tuple(
            advice(
                jobs,
                grace,
                timed_out=True,
                drain_timeout_s=options.timeout_s,
                interrupted=interrupted,
            )
        )
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
        return f"{plural(n, 'process', 'processes')} still running jobs at the deadline"
    return f"{n} process{'es' if n != 1 else ''} not confirmed quiet"


def _skipped_entry(proc: ProcessRecord, outcome: Outcome, fleet: FleetSnapshot) -> OutcomeEntry:
    """An already-quiet process carries the deploy of its scope that quieted it, and when:
    "quiet since deploy X" outlives X's record."""
    if outcome is not Outcome.ALREADY_QUIET:
        return OutcomeEntry(outcome.value)
    since = quiet_since_any(fleet.history, proc.identity)
    if since is None:
        return OutcomeEntry(outcome.value)
    origin, at = since
    return OutcomeEntry(outcome.value, confirmed_at=at, quiet_since_deploy=origin.deploy_id)


@dataclasses.dataclass(frozen=True, slots=True)
class _FlyView:
    target: FlyTarget | None
    machines: tuple[MachineEntry, ...] = ()
    checked: bool = False
    notes: tuple[str, ...] = ()


def _read_fly(options: QuietOptions, fly: FlyReader | None, budget_s: float) -> _FlyView:
    """What Fly says: the app's Machines and the target release (the release Machine's
    metadata), within ``budget_s`` per call. Any failure is one note, ``checked`` false."""
    app = fly.app if fly is not None else options.fly_app
    target = None
    if app:
        target = FlyTarget(app, options.image_ref or "", None, options.release_machine)
    if fly is None:
        return _FlyView(
            target,
            notes=(
                f"Fly not checked ({options.fly_missing or 'no Fly API client'}): the deploy "
                "record has no Machine list, so rejoin cannot verify images (give the "
                "release command FLY_API_TOKEN)",
            ),
        )
    try:
        machines = fly.list_machines(budget_s=budget_s)
    except QuiesceError as exc:
        return _FlyView(
            target, notes=(f"Fly not checked: {exc}; the deploy record has no Machine list",)
        )
    notes: tuple[str, ...] = ()
    if target is not None and options.release_machine:
        try:
            own = fly.get_machine(options.release_machine, budget_s=budget_s)
        except QuiesceError as exc:
            notes = (f"target release not recorded: {exc}",)
        else:
            target = dataclasses.replace(target, release_version=own.release_version or None)
    entries = tuple(MachineEntry.from_machine(m) for m in machines)
    return _FlyView(target, entries, True, notes)


class _FlyInBackground:
    """The Fly read beside the wait, so a slow or hung Fly API never takes time from the
    confirmations: started after the push, collected when the wait ends, and given up
    (one note, ``fly_checked`` false) if it is still running at the wait's deadline."""

    def __init__(self, run: QuietRun, fly: FlyReader | None) -> None:
        self.run = run
        self.fly = fly
        self.view: _FlyView | None = None
        self.thread = threading.Thread(target=self._read, name="quiesce-fly", daemon=True)
        if fly is not None:
            self.thread.start()

    def _read(self) -> None:
        self.view = _read_fly(self.run.options, self.fly, FLY_BUDGET_S)

    def apply(self, record: DeployRecord) -> DeployRecord:
        run = self.run
        if self.fly is None:
            view = _read_fly(run.options, None, 0.0)
        else:
            # An interrupted or broken run reports at once: Fly is not waited for then.
            wait_s = 0.0 if run.error is not None else run.deadline - run.clock()
            self.thread.join(min(FLY_BUDGET_S, max(0.0, wait_s)))
            view = self.view or _FlyView(
                _read_fly(run.options, None, 0.0).target,
                notes=("Fly not checked: no answer from the Fly API by the deadline",),
            )
        for text in view.notes:
            run.note(text)
        return record.with_fly(view.target, view.machines, checked=view.checked)


def _with_fly(run: QuietRun, record: DeployRecord, fly: FlyReader | None) -> DeployRecord:
    """The record with what Fly says, read now (nothing was signalled: no wait to spare);
    notes go into the report only."""
    view = _read_fly(run.options, fly, min(FLY_BUDGET_S, max(0.0, run.deadline - run.clock())))
    run.notes.extend(view.notes)
    return record.with_fly(view.target, view.machines, checked=view.checked)


def _save_now(stores: Sequence[FleetStore], record: DeployRecord, fleet: FleetSnapshot) -> None:
    """The record of a run that signalled nothing. Nothing is lost by failing here: an
    exit 0 without its record would leave later commands judging by an older deploy."""
    body = record.to_json()
    for store in stores:
        store.save_records(
            _record_writes(store.keys, body),
            ledger=_ledger_writes(store.keys, record, body, fleet),
        )


def _first_push(run: QuietRun, record: DeployRecord, body: str, fleet: FleetSnapshot) -> None:
    """Every server's atomic push, with the record. A refusal before any signal went
    out is an ordinary error; after some server took its pushes, it ends the run."""
    done_any = False
    for store in run.stores:
        targets = run.targets[store.label]
        try:
            run.push(
                store,
                targets,
                _record_writes(store.keys, body),
                _ledger_writes(store.keys, record, body, fleet),
            )
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


def _save(run: QuietRun, record: DeployRecord, body: str, fleet: FleetSnapshot) -> bool:
    """Write the final record, once per server, never past the deadline plus one attempt;
    a server that was unreachable at the end is not waited for again."""
    saved = True
    for store in run.stores:
        if store.label in run.unreachable:
            saved = False
            continue
        try:
            # A deadline already past: one attempt, no retries (the wait's time is spent).
            store.save_records(
                _record_writes(store.keys, body),
                deadline=0.0,
                ledger=_ledger_writes(store.keys, record, body, fleet),
            )
        except QuiesceError as exc:
            log.warning("could not save the deploy record on %s: %s", store.label, exc)
            saved = False
    return saved


def _warn_short_timeout(run: QuietRun, targets: Sequence[ProcessRecord]) -> None:
    """Warn when the wait cannot fit the beats a confirmation needs, with the basis: the
    interval of the versions read. A version only inferred (no ``info.version`` up to
    7.0.1) may beat every 5 s (6.x) or 10 s (7.0.0/7.0.1): both are said, and the warning
    is given only when even the shorter does not fit."""
    if not run.options.wait:
        return
    beats = 1 if run.options.until is Until.DELIVERED else 2
    what = "one heartbeat" if beats == 1 else "two heartbeats"
    slowest = max(targets, key=lambda p: p.beat_interval_s)
    version = slowest.version
    low = (version.beat_interval_min_s if version else None) or slowest.beat_interval_s
    if run.options.timeout_s >= low * beats:
        return
    if version is None:
        basis = f"{slowest.beat_interval_s * beats:g}s: version unknown, 10 s per beat assumed"
    elif version.beat_interval_min_s is not None:
        basis = (
            f"{low * beats:g}s if they run 6.x, which beats every {low:g} s, "
            f"{slowest.beat_interval_s * beats:g}s if 7.0.0/7.0.1, every "
            f"{slowest.beat_interval_s:g} s: Sidekiq {version.text} writes no version"
        )
    else:
        basis = (
            f"{slowest.beat_interval_s * beats:g}s: Sidekiq {version.text} beats every "
            f"{slowest.beat_interval_s:g} s"
        )
    run.note(
        f"--timeout {run.options.timeout_s:g}s is shorter than {what} of these processes "
        f"({basis}): some cannot confirm in time"
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
    reason = target.problem or target.work_note
    if outcome is Outcome.STALLED:
        reason = _stalled_reason(target)
    elif outcome is Outcome.VANISHED and target.running:
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


def _stalled_reason(target: Target) -> str:
    interval = f"it beats every {target.record.beat_interval_s:g}s"
    if target.hash_expired:
        why = f"no heartbeat for over {k.HEARTBEAT_TTL_S}s (its hash expired; {interval})"
    elif target.beat_age_s is not None:
        why = f"last heartbeat {target.beat_age_s:.0f}s ago ({interval})"
    else:
        why = "heartbeat overdue"
    if target.running:
        n = max(target.busy or 0, target.work.entries)
        why += (
            f"; its last beat listed {plural(n, 'running job')}: if it died they are lost "
            "unless a reliable fetch (Sidekiq Pro super_fetch) recovers them"
        )
    return why


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
