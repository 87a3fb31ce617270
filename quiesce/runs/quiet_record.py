"""The writes of a quiet run besides the signals: its deploy record (in the same MULTI
as the first push, rewritten at the end), its scope's ledger, and Sidekiq's deploy mark."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from quiesce.errors import (
    QuiesceError,
    RedisProblem,
)
from quiesce.model.fleet import ProcessRecord
from quiesce.model.ledger import LEDGER_SIZE, quiet_since_any
from quiesce.model.quiet import (
    Outcome,
)
from quiesce.model.record import DeployRecord, mark_stamp
from quiesce.model.record_entries import OutcomeEntry
from quiesce.model.report import (
    QuietOptions,
)
from quiesce.model.snapshot import FleetSnapshot
from quiesce.runs.confirm import FleetStore, QuietRun
from quiesce.sidekiq import keys as k
from quiesce.sidekiq.rows import LedgerWrite

log = logging.getLogger(__name__)


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
