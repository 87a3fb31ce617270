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

from quiesce import __version__
from quiesce.errors import (
    ConfigError,
    Interrupted,
    QuiesceError,
)
from quiesce.model.drain import Grace, advice, drain_plan
from quiesce.model.filters import Filters, scope_of, unmatched_filters
from quiesce.model.fleet import ProcessRecord
from quiesce.model.quiet import (
    FAILED_OUTCOMES,
    Outcome,
    QuietPlan,
    live_targets,
    plan_quiet,
    shrink_warning,
)
from quiesce.model.record import DeployRecord, new_deploy_id
from quiesce.model.record_entries import OutcomeEntry
from quiesce.model.report import (
    Event,
    ProcessOutcome,
    Pushed,
    QuietOptions,
    QuietReport,
)
from quiesce.model.snapshot import FleetSnapshot
from quiesce.model.verdict import (
    Target,
    Until,
)
from quiesce.runs.confirm import FleetStore, QuietRun, _outcome, _seconds, _work_notes
from quiesce.runs.quiet_fly import FlyReader, _FlyInBackground, _with_fly
from quiesce.runs.quiet_record import _first_push, _mark, _save, _save_now, _skipped_entry
from quiesce.runs.read import look_elsewhere, observe
from quiesce.sidekiq.work import longest_first
from quiesce.text import plural

log = logging.getLogger(__name__)


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
