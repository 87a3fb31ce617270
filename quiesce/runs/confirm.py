"""The push and the wait of a quiet run: signal every target in one MULTI per server,
then poll (one round trip per server) until each is confirmed, gone or out of time,
riding out restarts and outages of Redis within the deadline."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from quiesce.errors import (
    Interrupted,
    QuiesceError,
    RedisUnavailable,
)
from quiesce.model.drain import longest
from quiesce.model.fleet import ProcessRecord
from quiesce.model.quiet import (
    Outcome,
)
from quiesce.model.report import (
    Event,
    Notice,
    ProcessOutcome,
    Progress,
    QuietOptions,
)
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
from quiesce.runs.read import FleetReader
from quiesce.sidekiq import keys as k
from quiesce.sidekiq.rows import LedgerWrite, Poll, Push
from quiesce.sidekiq.versions import QUIET_SIGNAL
from quiesce.sidekiq.work import work_suffixes
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


def _work_notes(run: QuietRun) -> None:
    """A work hash that could not be read is said once per process: it is no failure."""
    for target in run.all_targets():
        if target.work_note is not None:
            run.note(f"{target.identity}: {target.work_note}")


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


def _suffixes(record: ProcessRecord) -> tuple[str, ...]:
    version = record.version
    return work_suffixes(version.text if version else None, bool(version and version.inferred))
