"""Text and JSON views of running jobs (``status --jobs``, the drain report) (pure).

Job arguments may hold personal data: they appear only when asked for (``--args``).
Every Redis-derived string goes through ``text.safe`` before it reaches a terminal.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from quiesce.model.drain import longest, running_jobs
from quiesce.model.fleet import ProcessRecord
from quiesce.model.snapshot import FleetSnapshot
from quiesce.sidekiq.work import RunningJob, longest_first
from quiesce.text import duration, safe
from quiesce.views.table import Column, cut, fit

ARGS_CHARS = 80
"""Arguments are cut to this many characters in text output (JSON carries them whole)."""


def job_json(job: RunningJob, *, args: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "class": job.job_class,
        "queue": job.queue,
        "jid": job.jid,
        "tid": job.tid,
        "identity": job.identity,
        "machine": job.machine,
        "run_at": job.run_at,
        "runtime_s": None if job.runtime_s is None else round(job.runtime_s, 3),
        "enqueued_at": job.enqueued_at,
    }
    if args:
        data["args"] = job.args
    return data


def job_line(job: RunningJob, *, args: bool = False, machine: bool = False) -> str:
    text = (
        f"    {duration(job.runtime_s):>7}  {safe(job.job_class)[:40]:<40} "
        f"{safe(job.queue)[:16]:<16} {safe(job.jid or '?')}"
    )
    if machine:
        text += f"  on {safe(job.machine)}"
    if args:
        dumped = json.dumps(job.args, ensure_ascii=False, separators=(",", ":"))
        cut = dumped if len(dumped) <= ARGS_CHARS else dumped[: ARGS_CHARS - 3] + "..."
        text += f"  args {safe(cut)}"
    return text


def _by_process(snapshot: FleetSnapshot) -> list[ProcessRecord]:
    """Processes with jobs, the one running the longest job first."""
    busy = [p for p in snapshot.processes if p.work is not None and p.work.entries]

    def key(p: ProcessRecord) -> tuple[float, str]:
        top = longest(p.work.jobs) if p.work else None
        return (-(top.runtime_s or 0.0) if top else 0.0, p.identity)

    return sorted(busy, key=key)


_JOB_COLUMNS = (
    Column("RUNTIME", right=True),
    Column("CLASS", flex=True, min_width=24),
    Column("QUEUE", drop=2, min_width=6),
    Column("JID", drop=1, min_width=8),
)


def jobs_text(
    snapshot: FleetSnapshot, *, args: bool = False, width: int | None = None
) -> list[str]:
    """Per process (longest running job first), its jobs longest first; then the summary.
    ``width``: the terminal's columns (the job table fits them; arguments are not cut)."""
    if width is not None and not args:
        return _jobs_fitted(snapshot, width)
    lines = [""]
    procs = _by_process(snapshot)
    if not procs:
        lines.append("no jobs running")
    for p in procs:
        assert p.work is not None
        n = p.work.entries
        lines.append(
            safe(
                f"{p.identity} on {p.machine} ({p.state.value}, {n} running"
                f"{'' if p.busy is None else f', busy {p.busy}'})"
            )
        )
        lines.append(f"    {'RUNTIME':>7}  {'CLASS':<40} {'QUEUE':<16} JID")
        lines.extend(job_line(j, args=args) for j in p.work.jobs)
        lines.extend(f"    unreadable entry: {safe(problem)}" for problem in p.work.problems)
    lines.append(jobs_summary(snapshot))
    return lines


def _jobs_fitted(snapshot: FleetSnapshot, width: int) -> list[str]:
    lines = [""]
    procs = _by_process(snapshot)
    if not procs:
        lines.append("no jobs running")
    for p in procs:
        assert p.work is not None
        busy = "" if p.busy is None else f", busy {p.busy}"
        head = f"{p.identity} on {p.machine} ({p.state.value}, {p.work.entries} running{busy})"
        lines.append(cut(safe(head), width))
        rows = [
            [
                duration(j.runtime_s),
                safe(j.job_class),
                safe(j.queue),
                safe(j.jid or "?"),
            ]
            for j in p.work.jobs
        ]
        lines.extend(fit(_JOB_COLUMNS, rows, width, indent=4))
        lines.extend(f"    unreadable entry: {safe(problem)}" for problem in p.work.problems)
    lines.append(jobs_summary(snapshot))
    return lines


def jobs_summary(snapshot: FleetSnapshot) -> str:
    """``jobs running on quiet processes: 2 (longest 14s: SleepJob); 5 in all``."""
    quiet = running_jobs(snapshot, quiet_only=True)
    every = running_jobs(snapshot)
    top = longest(quiet)
    longest_text = f" (longest {duration(top.runtime_s)}: {top.job_class})" if top else ""
    return safe(f"jobs running on quiet processes: {len(quiet)}{longest_text}; {len(every)} in all")


def add_jobs_json(data: dict[str, Any], snapshot: FleetSnapshot, *, args: bool = False) -> None:
    """``status --jobs --json``: each process gets ``jobs`` (longest first) and
    ``job_problems``; the top level gets ``jobs_summary``."""
    by_identity = {p.identity: p for p in snapshot.processes}
    for machine in data.get("machines", []):
        for proc in machine.get("processes", []):
            record = by_identity.get(proc["identity"])
            work = record.work if record is not None else None
            proc["jobs"] = [job_json(j, args=args) for j in work.jobs] if work else []
            proc["job_problems"] = list(work.problems) if work else []
    quiet = running_jobs(snapshot, quiet_only=True)
    top = longest(quiet)
    data["jobs_summary"] = {
        "running": len(running_jobs(snapshot)),
        "running_on_quiet": len(quiet),
        "longest_on_quiet_s": None if top is None or top.runtime_s is None else top.runtime_s,
        "longest_on_quiet": job_json(top) if top else None,
    }


def excluded_text(by_filter: Sequence[tuple[str, int]]) -> str | None:
    parts = [f"{reason}: {n}" for reason, n in by_filter]
    if not parts:
        return None
    total = sum(n for _, n in by_filter)
    return safe(f"excluded by filters: {total} ({'; '.join(parts)})")


def sorted_jobs(jobs: Sequence[RunningJob]) -> list[RunningJob]:
    return sorted(jobs, key=longest_first)
