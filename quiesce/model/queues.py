"""Queues as the exporter sees them: latency, consumers, and why a queue is paused (pure).

Latency is Sidekiq's ``Queue#latency``: Redis time minus the oldest job's
``enqueued_at`` (``created_at`` when it is missing, as 8.1.1+ does). Job timestamps are
float epoch seconds up to 7.x and integer epoch milliseconds from 8.0
(``versions.JobTimeUnits``); during a 7 -> 8 upgrade both sit in one queue, so the
unit is read from each value, never from a version.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Iterable, Mapping

from quiesce.model.fleet import ProcessRecord, ProcessState
from quiesce.model.snapshot import FleetSnapshot
from quiesce.sidekiq.rows import RawQueues
from quiesce.sidekiq.work import job_time

CONSUMING_STATES = frozenset({ProcessState.RUNNING, ProcessState.EMBEDDED})
"""States that fetch jobs. Quiet, quieting (it popped TSTP: it stopped fetching),
stalled (no beat: hung or gone), dead and unreadable processes do not count."""


class PauseReason(enum.StrEnum):
    NO_CONSUMER = "no_consumer"
    """No running process listens on the queue (the fleet is quiet, or the queue has no
    worker at all)."""
    PRO_PAUSED = "pro_paused"
    """The queue is in Sidekiq Pro's ``paused`` set."""


def enqueued_at(job_json: str) -> float | None:
    """When the job was enqueued (``enqueued_at``, else ``created_at``), epoch seconds."""
    try:
        job = json.loads(job_json)
    except (ValueError, RecursionError):
        return None
    if not isinstance(job, dict):
        return None
    for field in ("enqueued_at", "created_at"):
        parsed = job_time(job.get(field))
        if parsed is not None:
            return parsed[0]
    return None


def latency(oldest_job: str | None, now: float) -> float | None:
    """Seconds the oldest job has waited; 0 for an empty queue, None when unreadable.

    Clamped at 0: the client's clock may run ahead of Redis's.
    """
    if oldest_job is None:
        return 0.0
    at = enqueued_at(oldest_job)
    return None if at is None else max(0.0, now - at)


@dataclasses.dataclass(frozen=True, slots=True)
class QueueView:
    name: str
    size: int | None
    latency_s: float | None
    consumers: int
    """Running (non-quiet) processes that listen on it."""
    reasons: frozenset[PauseReason]
    unconsumed_s: float | None = None
    """How long since its last consumer went quiet or stopped beating (None: unknown)."""
    error: str | None = None

    @property
    def paused(self) -> bool:
        return bool(self.reasons)


@dataclasses.dataclass(frozen=True, slots=True)
class QueuesView:
    queues: tuple[QueueView, ...]
    schedule_due: int | None
    retry_due: int | None
    scheduler_running: bool
    """Some process fetches jobs, so its poller moves due scheduled/retry jobs on; every
    quiet process stops its poller (protocol doc 8.15)."""

    @property
    def paused_queued_jobs(self) -> int:
        return sum(q.size or 0 for q in self.queues if q.paused)

    def paused_due_jobs(self, due: int | None) -> int:
        return 0 if self.scheduler_running or due is None else due


def consumers_by_queue(processes: Iterable[ProcessRecord]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for proc in processes:
        if proc.state in CONSUMING_STATES:
            for name in proc.queues:
                counts[name] = counts.get(name, 0) + 1
    return counts


def _last_consumer_gone(fleet: FleetSnapshot) -> dict[str, float]:
    """Per queue: the latest time (Redis clock) one of its listeners stopped consuming."""
    deploy = fleet.latest_deploy
    gone: dict[str, float] = {}
    for proc in fleet.processes:
        since: float | None = None
        state = proc.state
        if state in (ProcessState.QUIET, ProcessState.QUIETING) and deploy is not None:
            entry = deploy.outcomes.get(proc.identity)
            if entry is not None:
                since = entry.confirmed_at if entry.confirmed_at is not None else entry.pushed_at
        elif state is ProcessState.STALLED and proc.beat_age_s is not None:
            since = fleet.taken_at - proc.beat_age_s
        if since is None:
            continue
        for name in proc.queues:
            gone[name] = max(gone.get(name, since), since)
    return gone


def view_queues(raw: RawQueues, fleet: FleetSnapshot) -> QueuesView:
    consumers = consumers_by_queue(fleet.processes)
    gone = _last_consumer_gone(fleet)
    paused_set: Mapping[str, object] = dict.fromkeys(raw.paused or ())
    views = []
    for q in raw.queues:
        count = consumers.get(q.name, 0)
        reasons = set()
        if count == 0:
            reasons.add(PauseReason.NO_CONSUMER)
        if q.name in paused_set:
            reasons.add(PauseReason.PRO_PAUSED)
        unconsumed = None
        if count == 0 and q.name in gone:
            unconsumed = max(0.0, raw.time - gone[q.name])
        views.append(
            QueueView(
                name=q.name,
                size=q.size,
                latency_s=None if q.error else latency(q.oldest, raw.time),
                consumers=count,
                reasons=frozenset(reasons),
                unconsumed_s=unconsumed,
                error=q.error,
            )
        )
    return QueuesView(
        queues=tuple(views),
        schedule_due=raw.schedule_due,
        retry_due=raw.retry_due,
        scheduler_running=any(p.state in CONSUMING_STATES for p in fleet.processes),
    )
