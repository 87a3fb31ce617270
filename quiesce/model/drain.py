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
    """How long a job gets once its Machine is told to stop, from what is known."""

    kill_timeout_s: float | None
    """Fly's ``kill_timeout`` (``--kill-timeout``), when given; else Fly's default."""
    sidekiq_timeout_s: float | None
    """Sidekiq's ``-t`` (``--sidekiq-timeout``), when given; else Sidekiq's default."""
    beat_interval_s: float = 10.0
    """The fleet's heartbeat interval (its versions' longest): how soon a drain can see a
    job finish."""

    @property
    def sidekiq_s(self) -> float:
        return self.sidekiq_timeout_s or SIDEKIQ_DEFAULT_TIMEOUT_S

    @property
    def kill_s(self) -> float:
        return self.kill_timeout_s or FLY_DEFAULT_KILL_TIMEOUT_S

    @property
    def seconds(self) -> float:
        """The shorter of the two: Sidekiq gives up at ``-t``, Fly kills at ``kill_timeout``."""
        return min(self.kill_s, self.sidekiq_s)

    @property
    def kill_text(self) -> str:
        if self.kill_timeout_s is not None:
            return f"kill_timeout {duration(self.kill_s)}"
        return (
            f"Fly's default kill_timeout of {duration(self.kill_s)} (assumed: no --kill-timeout "
            "given; pass fly.toml's value)"
        )

    @property
    def sidekiq_text(self) -> str:
        if self.sidekiq_timeout_s is not None:
            return f"Sidekiq's -t {duration(self.sidekiq_s)}"
        return (
            f"Sidekiq's -t (default {duration(SIDEKIQ_DEFAULT_TIMEOUT_S)}, assumed: no "
            "--sidekiq-timeout given)"
        )

    @property
    def shorter_text(self) -> str:
        """Which limit ``seconds`` is, and why."""
        if self.kill_s < self.sidekiq_s:
            return self.kill_text
        return self.sidekiq_text


def _job(job: RunningJob) -> str:
    runtime = duration(job.runtime_s)
    return f"{job.job_class} (jid {job.jid or '?'}, queue {job.queue}, running {runtime})"


def advice(
    jobs: Sequence[RunningJob],
    grace: Grace,
    *,
    timed_out: bool,
    drain_timeout_s: float | None,
    interrupted: bool = False,
) -> list[str]:
    """What happens to ``jobs`` when their Machines stop, and what to change: every
    number with the reason it is that number.

    ``timed_out``: a drain ended (deadline, or ``interrupted``) with these jobs still
    running. Otherwise they are the jobs seen running (at the start, or during the
    drain), compared with ``grace``.
    """
    lines: list[str] = []
    margin = duration(KILL_MARGIN_S)
    need_kill = grace.sidekiq_s + KILL_MARGIN_S
    # Said when the kill_timeout is known, or when jobs make the assumed default matter.
    if grace.kill_s < need_kill and (grace.kill_timeout_s is not None or jobs):
        lines.append(
            f"{grace.kill_text} leaves no room for {grace.sidekiq_text}: Fly kills the Machine "
            "before Sidekiq can push unfinished jobs back to Redis. Set kill_timeout in fly.toml "
            f"to at least {duration(need_kill)} (-t plus {margin} for Sidekiq to push them back)."
        )
    if not jobs:
        return lines
    top = longest(jobs)
    if timed_out:
        when = "when the run was interrupted" if interrupted else "at the deadline"
        lines.append(
            f"{len(jobs)} job{'s' if len(jobs) != 1 else ''} still running {when}: when their "
            f"Machines stop, each gets {duration(grace.seconds)} more ({grace.shorter_text}), "
            "then is killed mid-run and starts again from scratch later (side effects may "
            "happen twice):"
        )
        lines.extend(f"  {_job(j)} on {j.machine}" for j in jobs[:20])
        if len(jobs) > 20:
            lines.append(f"  ... and {len(jobs) - 20} more")
    if top is None or top.runtime_s is None:
        return lines
    ran = math.ceil(top.runtime_s)
    if top.runtime_s <= grace.seconds and not timed_out:
        lines.append(
            f"the longest running job, {_job(top)}, fits in the {duration(grace.seconds)} a "
            f"stopping Machine gives it ({grace.shorter_text}), if it finishes soon"
        )
        return lines
    over = top.runtime_s > grace.seconds
    compare = (
        f"longer than the {duration(grace.seconds)} a stopping Machine gives it "
        f"({grace.shorter_text})"
        if over
        else f"and is not done: a stopping Machine gives it {duration(grace.seconds)} more "
        f"({grace.shorter_text})"
    )
    beats = 2 * grace.beat_interval_s
    wait = ran + math.ceil(beats)
    fixes = [
        f"drain before deploying: quiesce quiet --until drained --timeout {wait} or more "
        f"({duration(ran)} it has run so far plus two heartbeats, {duration(beats)}, to see it "
        "finish; its full runtime is unknown to quiesce), with release_command_timeout above "
        "--timeout"
    ]
    if grace.sidekiq_s < ran:
        fixes.append(
            f"let shutdown wait: raise -t above the longest job (more than {duration(ran)}; "
            f"now {grace.sidekiq_text}), and kill_timeout in fly.toml at -t + {margin}"
        )
    elif grace.kill_s < need_kill:
        fixes.append(
            f"let shutdown wait: {grace.sidekiq_text} already covers the {duration(ran)} it has "
            f"run so far; kill_timeout must too: at least {duration(need_kill)} (-t + {margin})"
        )
    lines.append(
        f"the longest, {_job(top)}, has run {duration(top.runtime_s)}, {compare}. Either "
        + ", or ".join(fixes)
        + "."
    )
    return lines
