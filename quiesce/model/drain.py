"""Draining: which jobs still run on quieted processes, and what a deploy will do to them
(pure; ``now`` passed in).

A process is *idle* when both of Sidekiq's own accounts agree: the ``busy`` field of its
hash and its work hash (``quiesce.sidekiq.work``). They are written a few milliseconds apart in
every beat, from one copy of the thread state, so a poll may catch them disagreeing for
a moment: that is read as "not idle yet", never as idle.

Also the read-only views other code builds on: ``running_jobs(snapshot)`` and
``queue_jobs(snapshot)`` (the metrics exporter reads these: running jobs on quiet
processes and the longest running job's age per queue).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

from quiesce.model.fleet import ProcessRecord
from quiesce.model.quiet import Outcome, QuietPlan
from quiesce.model.snapshot import FleetSnapshot
from quiesce.sidekiq.work import NO_WORK, RunningJob, WorkRead, band_of, decode_work, longest_first
from quiesce.text import duration

SIDEKIQ_DEFAULT_TIMEOUT_S = 25.0
"""Sidekiq's ``:timeout`` (``-t``) when not configured: how long TERM waits for jobs."""

FLY_DEFAULT_KILL_TIMEOUT_S = 5.0
"""Fly's ``kill_timeout`` when fly.toml sets none."""

KILL_MARGIN_S = 5.0
"""After ``-t`` runs out Sidekiq still pushes the unfinished jobs back to Redis and
leaves the registry: the platform's kill should come at least this much later."""


def read_work(record: ProcessRecord, entries: Mapping[str, str] | None, now: float) -> WorkRead:
    """A polled work hash, decoded with the units of ``record``'s version."""
    if not entries:
        return NO_WORK
    version = record.version
    band = band_of(version.text, version.inferred) if version else None
    return decode_work(
        record.identity,
        record.machine,
        entries,
        now=now,
        units=band.job_time_units if band else None,
        redis=record.redis,
    )


def busy_count(busy: str | None) -> int | None:
    try:
        return int(busy) if busy is not None else None
    except ValueError:
        return None


def is_idle(busy: int | None, work: WorkRead) -> bool:
    """Both accounts say no job is running (an unreadable ``busy`` is not idle)."""
    return busy == 0 and work.entries == 0


def drain_plan(plan: QuietPlan) -> QuietPlan:
    """``--until drained`` also waits for processes that were already quiet: they are
    not signalled again, but their running jobs count."""
    quiet = tuple(p for p, o in plan.skipped if o is Outcome.ALREADY_QUIET)
    if not quiet:
        return plan
    return dataclasses.replace(
        plan,
        targets=plan.targets + quiet,
        skipped=tuple((p, o) for p, o in plan.skipped if o is not Outcome.ALREADY_QUIET),
    )


# -- read-only views over a snapshot read with jobs ---------------------------------
def running_jobs(snapshot: FleetSnapshot, *, quiet_only: bool = False) -> tuple[RunningJob, ...]:
    """Every job running on a live process (``quiet_only``: on quiet or quieting ones),
    longest first. Empty when the snapshot was read without the work hashes."""
    jobs = [
        job
        for proc in snapshot.processes
        if proc.work is not None and proc.alive and (not quiet_only or proc.quiet or proc.quieting)
        for job in proc.work.jobs
    ]
    return tuple(sorted(jobs, key=longest_first))


@dataclasses.dataclass(frozen=True, slots=True)
class QueueJobs:
    running: int
    longest_s: float | None


def queue_jobs(snapshot: FleetSnapshot, *, quiet_only: bool = True) -> dict[str, QueueJobs]:
    """Per queue: how many jobs run (on quiet processes by default) and the longest one's
    runtime. Queue names are the app's own (bounded): fit for metric labels."""
    out: dict[str, QueueJobs] = {}
    for job in running_jobs(snapshot, quiet_only=quiet_only):
        seen = out.get(job.queue)
        runtime = job.runtime_s
        if seen is None:
            out[job.queue] = QueueJobs(1, runtime)
            continue
        longest = seen.longest_s
        if runtime is not None and (longest is None or runtime > longest):
            longest = runtime
        out[job.queue] = QueueJobs(seen.running + 1, longest)
    return out


def longest(jobs: Iterable[RunningJob]) -> RunningJob | None:
    timed = [j for j in jobs if j.runtime_s is not None]
    return max(timed, key=lambda j: j.runtime_s or 0.0, default=None)


# -- advice -------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class Grace:
    """How long a job gets once its Machine is told to stop."""

    kill_timeout_s: float | None
    """Fly's ``kill_timeout`` (``--kill-timeout``), when given."""
    sidekiq_timeout_s: float | None
    """Sidekiq's ``-t`` (``--sidekiq-timeout``), when given."""

    @property
    def sidekiq_s(self) -> float:
        return self.sidekiq_timeout_s or SIDEKIQ_DEFAULT_TIMEOUT_S

    @property
    def seconds(self) -> float:
        """The shorter of the two: Sidekiq gives up at ``-t``, Fly kills at ``kill_timeout``."""
        if self.kill_timeout_s is None:
            return self.sidekiq_s
        return min(self.kill_timeout_s, self.sidekiq_s)


def _job(job: RunningJob) -> str:
    runtime = duration(job.runtime_s)
    return f"{job.job_class} (jid {job.jid or '?'}, queue {job.queue}, running {runtime})"


def advice(
    jobs: Sequence[RunningJob], grace: Grace, *, timed_out: bool, drain_timeout_s: float | None
) -> list[str]:
    """What happens to ``jobs`` when their Machines stop, and what to change.

    ``timed_out``: a drain ended with these jobs still running. Otherwise they are the
    jobs seen running (at the start, or during the drain), compared with ``grace``.
    """
    lines: list[str] = []
    t_text = (
        f"Sidekiq's -t {duration(grace.sidekiq_s)}"
        if grace.sidekiq_timeout_s is not None
        else f"Sidekiq's -t (default {duration(SIDEKIQ_DEFAULT_TIMEOUT_S)}, if unchanged)"
    )
    k = grace.kill_timeout_s
    if k is not None and k < grace.sidekiq_s + KILL_MARGIN_S:
        lines.append(
            f"kill_timeout {duration(k)} leaves no room for {t_text}: Fly kills the Machine before "
            "Sidekiq can push unfinished jobs back to Redis. Set kill_timeout in fly.toml to at "
            f"least {duration(grace.sidekiq_s + KILL_MARGIN_S)} "
            f"(-t plus {duration(KILL_MARGIN_S)})."
        )
    top = longest(jobs)
    if not jobs:
        return lines
    if timed_out:
        lines.append(
            f"{len(jobs)} job{'s' if len(jobs) != 1 else ''} still running: when their "
            f"Machines stop, each gets {duration(grace.seconds)} more, then is killed mid-run and "
            "starts again from scratch later (side effects may happen twice):"
        )
        lines.extend(f"  {_job(j)} on {j.machine}" for j in jobs[:20])
        if len(jobs) > 20:
            lines.append(f"  ... and {len(jobs) - 20} more")
    if top is None or top.runtime_s is None:
        return lines
    need = math.ceil(top.runtime_s)
    if top.runtime_s > grace.seconds or timed_out:
        wait = max(need * 2, int(drain_timeout_s or 0) + 60)
        lines.append(
            f"the longest, {_job(top)}, has run {duration(top.runtime_s)}, longer than the "
            f"{duration(grace.seconds)} a stopping Machine gives it. Either drain before deploying "
            f"(quiesce quiet --until drained --timeout {wait}, with release_command_timeout "
            f"above it), or let shutdown wait: Sidekiq's -t above the longest job (>= {need}s) "
            f"and kill_timeout in fly.toml at -t + {duration(KILL_MARGIN_S)}."
        )
    else:
        lines.append(
            f"the longest running job, {_job(top)}, fits in the {duration(grace.seconds)} a "
            "stopping Machine gives it, if it finishes soon"
        )
    return lines
