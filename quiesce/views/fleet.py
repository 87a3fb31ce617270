"""Text and JSON views of a fleet snapshot and of a quiet report (pure).

The JSON shapes are a documented interface (README, "JSON output"): fields are only
ever added, never renamed or removed, within a major version.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from quiesce.errors import ExitCode
from quiesce.model.fleet import ProcessRecord, ProcessState
from quiesce.model.quiet import FAILED_OUTCOMES, Outcome
from quiesce.model.record import DeployRecord, quiet_since
from quiesce.model.report import ProcessOutcome, QuietReport
from quiesce.model.snapshot import FleetSnapshot, count_states
from quiesce.text import duration, plural, safe
from quiesce.views import JSON_VERSION
from quiesce.views.jobs import excluded_text, job_json, job_line
from quiesce.views.table import Column, cut, fit


def _processes(n: int) -> str:
    return plural(n, "process", "processes")


def _text(lines: Iterable[str]) -> str:
    """The one exit for text output: Redis-derived text is escaped, line by line (quiesce's
    own lines contain no control characters, so nothing legitimate changes)."""
    lines = list(lines)
    whole = "".join(lines)
    if safe(whole) == whole:  # one pass over 10,000 rows instead of one per row
        return "\n".join(lines)
    return "\n".join(safe(line) for line in lines)


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.0f}MiB"


def _version(proc: ProcessRecord) -> str:
    if proc.version is None:
        return "?"
    return f"~{proc.version.text}" if proc.version.inferred else proc.version.text


def quiet_for(proc: ProcessRecord, snapshot: FleetSnapshot) -> float | None:
    if not proc.quiet:
        return None
    since = quiet_since(snapshot.latest_deploy, proc.identity)
    return None if since is None else max(0.0, snapshot.taken_at - since)


def process_json(proc: ProcessRecord, snapshot: FleetSnapshot) -> dict[str, Any]:
    return {
        "identity": proc.identity,
        "machine": proc.machine,
        "hostname": proc.hostname,
        "pid": proc.pid,
        "redis": proc.redis,
        "state": proc.state.value,
        "version": proc.version.text if proc.version else None,
        "version_inferred": proc.version.inferred if proc.version else None,
        "tag": proc.tag,
        "labels": list(proc.labels),
        "queues": list(proc.queues),
        "quiet": proc.quiet,
        "embedded": proc.embedded,
        "busy": proc.busy,
        "concurrency": proc.concurrency,
        "beat": proc.beat,
        "beat_age_s": _round(proc.beat_age_s),
        "quiet_for_s": _round(quiet_for(proc, snapshot)),
        "pending_signals": list(proc.pending_signals),
        "rss_kib": proc.rss_kib,
        "rtt_us": proc.rtt_us,
        "started_at": proc.started_at,
        "problem": proc.problem,
        "notes": list(proc.notes),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


_STATES = tuple((state, state.value) for state in ProcessState)
"""Iterating the enum (and ``.value``) is slow Python: a 10,000-Machine fleet summarises
10,001 times."""


def _summary(processes: Iterable[ProcessRecord]) -> dict[str, Any]:
    procs = processes if isinstance(processes, list | tuple) else list(processes)
    counts = dict.fromkeys([state for state, _ in _STATES], 0)
    busy = concurrency = 0
    for p in procs:
        counts[p.state] += 1
        if p.alive:
            busy += p.busy or 0
            concurrency += p.concurrency or 0
    return {
        "processes": len(procs),
        "machines": len({p.machine for p in procs}),
        **{value: counts[state] for state, value in _STATES},
        "busy": busy,
        "concurrency": concurrency,
    }


def _deploy_json(deploy: DeployRecord | None) -> dict[str, Any] | None:
    if deploy is None:
        return None
    keep = ("deploy_id", "release", "strategy", "started_at", "finished_at", "until", "failure")
    return {key: getattr(deploy, key) for key in keep} | {"state": deploy.state.value}


def _oldest_beat(procs: Iterable[ProcessRecord]) -> float | None:
    ages = [p.beat_age_s for p in procs if p.alive and p.beat_age_s is not None]
    return max(ages) if ages else None


def _machine_json(
    name: str, procs: list[ProcessRecord], snapshot: FleetSnapshot, machines_only: bool
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "machine": name,
        "summary": _summary(procs),
        "oldest_beat_age_s": _round(_oldest_beat(procs)),
    }
    if not machines_only:
        data["processes"] = [process_json(p, snapshot) for p in procs]
    return data


def status_json(
    snapshot: FleetSnapshot, *, machines_only: bool = False, lazy: bool = False
) -> dict[str, Any]:
    """``machines_only`` (``--machines``): each Machine's summary, no per-process list.
    ``lazy``: ``machines`` is an iterator, built while it is written (a 10,000-Machine
    list held ~25 MB), for a caller that writes it once, in order."""
    machines = snapshot.by_machine()
    entries = (
        _machine_json(name, procs, snapshot, machines_only) for name, procs in machines.items()
    )
    return {
        "version": JSON_VERSION,
        "taken_at": snapshot.taken_at,
        "summary": _summary(snapshot.processes),
        "servers": [
            {"redis": s.redis, "connected_clients": s.connected_clients, "maxclients": s.maxclients}
            for s in snapshot.servers
        ],
        "latest_deploy": _deploy_json(snapshot.latest_deploy),
        "latest_deploy_problem": snapshot.deploy_problem,
        "rejoin": _rejoin_json(snapshot),
        "machines": entries if lazy else list(entries),
    }


def _rejoin_json(snapshot: FleetSnapshot) -> dict[str, Any] | None:
    from quiesce.model.rejoin import snapshot_rejoin
    from quiesce.views.rejoin import rejoin_json

    report = snapshot_rejoin(snapshot)
    return None if report is None else rejoin_json(report)


def summary_line(processes: Iterable[ProcessRecord]) -> str:
    s = _summary(processes)
    states = ", ".join(f"{s[st.value]} {st.value}" for st in ProcessState if s[st.value])
    return safe(
        f"{_processes(s['processes'])} on {plural(s['machines'], 'machine')}: "
        f"{states or 'none'}; {s['busy']}/{s['concurrency']} threads busy"
    )


def _states(procs: list[ProcessRecord]) -> str:
    if len(procs) == 1:  # one process per Machine: the usual Fly layout
        return f"1 {procs[0].state.value}"
    counts = count_states(procs)
    return ", ".join(f"{counts[state]} {value}" for state, value in _STATES if counts[state])


_STATUS_COLUMNS = (
    Column("PID", right=True, drop=1),
    Column("NONCE", drop=4, min_width=6),
    Column("VERSION"),
    Column("TAG/LABELS", flex=True, min_width=14),
    Column("STATE"),
    Column("BUSY", right=True, drop=2),
    Column("BEAT", right=True),
    Column("QUIET", right=True, drop=3),
    Column("SIGNALS", drop=5),
    Column("RSS", right=True, drop=6),
)
"""Dropped when the terminal is narrow: RSS first, then signals, the nonce, quiet time,
busy and pid; version, labels, state and beat always stay."""

_MACHINE_COLUMNS = (
    Column("MACHINE", flex=True, min_width=10),
    Column("PROCS", right=True),
    Column("BUSY", right=True, drop=1),
    Column("OLDEST BEAT", right=True, drop=2),
    Column("STATES"),
)


def status_text(
    snapshot: FleetSnapshot, *, machines_only: bool = False, width: int | None = None
) -> str:
    """Per process, grouped by Machine; ``machines_only``: one line per Machine.
    ``width``: the terminal's columns (None: as wide as the content)."""
    if not snapshot.processes:
        servers = ", ".join(s.redis for s in snapshot.servers)
        return safe(f"no Sidekiq processes registered in {servers} (the 'processes' set is empty)")
    lines = []
    multi_redis = len(snapshot.servers) > 1
    by_machine = snapshot.by_machine()
    if machines_only:
        rows = [_machine_row(machine, procs) for machine, procs in by_machine.items()]
        lines.extend(fit(_MACHINE_COLUMNS, rows, width, indent=0))
    else:
        # One layout for every Machine's block, so the columns line up down the page.
        cells = {p.identity: _status_cells(p, snapshot) for p in snapshot.processes}
        table = fit(_STATUS_COLUMNS, list(cells.values()), width)
        header, laid = table[0], dict(zip(cells, table[1:], strict=True))
        for machine, procs in by_machine.items():
            lines.append(
                cut(f"{safe(machine)}  ({_processes(len(procs))}: {_states(procs)})", width)
            )
            lines.append(header)
            lines.extend(laid[p.identity] + _status_extra(p, multi_redis) for p in procs)
    lines.append("")
    lines.append(summary_line(snapshot.processes))
    lines.extend(_deploy_lines(snapshot))
    lines.extend(_rejoin_lines(snapshot, width))
    return _text(lines)


def _rejoin_lines(snapshot: FleetSnapshot, width: int | None = None) -> list[str]:
    """The rejoin state per Machine when a deploy record exists (quiesce.views.rejoin)."""
    from quiesce.model.rejoin import snapshot_rejoin
    from quiesce.views.rejoin import status_rejoin_lines

    return status_rejoin_lines(snapshot_rejoin(snapshot), width)


def _deploy_lines(snapshot: FleetSnapshot) -> list[str]:
    lines = []
    deploy = snapshot.latest_deploy
    if deploy is not None:
        state = deploy.state.value
        if deploy.state.value == "pending" and snapshot.taken_at > (
            deploy.started_at + deploy.timeout_s + 60
        ):
            state = "unfinished (the release command stopped before recording its outcome)"
        failure = f": {deploy.failure}" if deploy.failure else ""
        lines.append(
            f"latest deploy: {deploy.deploy_id} release {deploy.release or '-'} "
            f"({deploy.strategy}), {duration(snapshot.taken_at - deploy.started_at)} ago, "
            f"{state}{failure}"
        )
    if snapshot.deploy_problem:
        lines.append(f"latest deploy record unreadable: {snapshot.deploy_problem}")
    return lines


def _machine_row(machine: str, procs: list[ProcessRecord]) -> list[str]:
    live = [p for p in procs if p.alive]
    busy = f"{sum(p.busy or 0 for p in live)}/{sum(p.concurrency or 0 for p in live)}"
    oldest = duration(_oldest_beat(live))
    return [safe(machine), str(len(procs)), busy, oldest, _states(procs)]


def _status_cells(p: ProcessRecord, snapshot: FleetSnapshot) -> list[str]:
    """One process's cells, escaped before any column is cut (an escape never straddles
    the cut)."""
    nonce = safe(p.identity.rsplit(":", 1)[-1])
    tag = safe(",".join(x for x in (p.tag, *p.labels) if x)) or "-"
    busy = f"{p.busy if p.busy is not None else '?'}/{p.concurrency or '?'}"
    signals = safe(",".join(p.pending_signals)) or "-"
    return [
        str(p.pid) if p.pid is not None else "?",
        nonce,
        safe(_version(p)),
        tag,
        p.state.value,
        busy,
        duration(p.beat_age_s),
        duration(quiet_for(p, snapshot)) if p.quiet else "",
        signals,
        _mib(p.rss_kib),
    ]


def _status_extra(p: ProcessRecord, multi_redis: bool) -> str:
    """What follows the row: its problem, notes and Redis (free text, not cut)."""
    row = ""
    if p.problem:
        row += f"  ({p.problem})"
    for note in p.notes:
        row += f"  (note: {safe(note)})"
    if multi_redis:
        row += f"  [{p.redis}]"
    return row


# -- quiet report -----------------------------------------------------------------

_EXPLAIN = {
    Outcome.STALLED: "its heartbeat is overdue: the process is hung or gone",
    Outcome.LOST: "left the registry together with its data (Redis restarted, or the process "
    "died) and did not come back: not a clean exit",
    Outcome.NOT_SIGNALLED: "the push never went in (Redis unreachable)",
    Outcome.SIGNAL_FAILED: "Redis refused the push",
    Outcome.NOT_CONFIRMED: "heartbeating, but the signal was not confirmed before the deadline",
    Outcome.EMBEDDED: "skipped: embedded Sidekiq ignores signals; quiet it through its host",
    Outcome.DEAD: "skipped: hash expired (stopped beating over 60 s ago)",
    Outcome.VANISHED: "exited during the wait",
    Outcome.STILL_BUSY: "took the signal, but jobs were still running at the deadline",
}


def report_json(report: QuietReport, best_effort: bool = False) -> dict[str, Any]:
    options = report.options
    return {
        "version": JSON_VERSION,
        "ok": report.ok,
        "error": str(report.error) if report.error is not None else None,
        "notes": list(report.notes),
        "record_saved": report.record_saved,
        "quieted_machines": list(report.quieted_machines),
        "exit_code": 0 if best_effort else int(report.exit_code),
        "deploy_id": report.deploy_id,
        "release": options.release,
        "strategy": options.strategy,
        "until": options.until.value,
        "timeout_s": options.timeout_s,
        "waited": options.wait and not options.dry_run,
        "dry_run": options.dry_run,
        "elapsed_s": round(report.elapsed_s, 3),
        "round_trips": report.round_trips,
        "excluded": report.excluded,
        "excluded_by": dict(report.excluded_by),
        "advice": list(report.advice),
        "marks": list(report.marks),
        "counts": {o.value: report.count(o) for o in Outcome if report.count(o)},
        "processes": [_entry_json(e) for e in report.entries],
    }


def _entry_json(e: ProcessOutcome) -> dict[str, Any]:
    p = e.process
    return {
        "identity": p.identity,
        "machine": p.machine,
        "pid": p.pid,
        "redis": p.redis,
        "version": p.version.text if p.version else None,
        "outcome": e.outcome.value,
        "pushes": e.pushes,
        "confirmed_after_s": _round(e.confirmed_after_s),
        "reason": e.reason,
        "problem": p.problem,
        "busy": e.busy,
        "jobs": [job_json(j) for j in e.jobs],
    }


def report_text(
    report: QuietReport, *, show_all: bool = False, best_effort: bool = False, live: bool = False
) -> str:
    """The release command's report. ``live``: the push line and the notes were already
    printed while the run ran (in order, for release logs), so they are not repeated."""
    o = report.options
    targets = [e for e in report.entries if e.outcome not in _SKIPS]
    machines = len({e.process.machine for e in targets})
    lines = []
    if not any(p.alive for p in report.snapshot.processes):
        servers = ", ".join(s.redis for s in report.snapshot.servers)
        lines.append(
            f"warning: no live Sidekiq processes registered in {servers}: nothing to quiet"
        )
    elif o.dry_run:
        lines.append(
            f"dry run: would signal TSTP to {_processes(len(targets))} on "
            f"{plural(machines, 'machine')}"
        )
    elif not targets:
        lines.append("nothing to signal: every live process is already quiet or was skipped")
    elif not live:
        how = f"until {o.until.value}, timeout {o.timeout_s:g}s" if o.wait else "no wait"
        lines.append(
            f"signalled TSTP to {_processes(len(targets))} on {plural(machines, 'machine')} ({how})"
        )
    if not live or not report.snapshot.processes:
        lines.extend(f"note: {n}" for n in report.notes)
    lines.extend(_entry_lines(report, show_all or o.dry_run))
    counts = ", ".join(f"{report.count(x)} {x.value}" for x in Outcome if report.count(x))
    lines.append(f"outcomes: {counts or 'no processes'}")
    if report.excluded:
        lines.append(excluded_text(report.excluded_by) or f"excluded by filters: {report.excluded}")
    lines.extend(line if line.startswith("  ") else f"advice: {line}" for line in report.advice)
    if report.deploy_id:
        release = o.release or "-"
        saved = "recorded" if report.record_saved else "NOT saved at the end (Redis unreachable)"
        lines.append(
            f"deploy {report.deploy_id} {saved} (release {release}, strategy {o.strategy})"
        )
    lines.extend(f"deploy mark {m}" for m in report.marks)
    if o.dry_run:
        lines.append("dry run: nothing was written")
    elif not report.ok:
        lines.extend(_failure_lines(report, best_effort))
    else:
        lines.append(f"OK in {report.elapsed_s:.1f}s")
    return _text(lines)


def _entry_lines(report: QuietReport, show_all: bool) -> list[str]:
    """Problems and notable skips (every entry with ``show_all``); a still-busy process
    with its running jobs."""
    lines = []
    interrupted = _interrupted(report)
    for e in report.entries:
        if show_all or e.outcome in FAILED_OUTCOMES or e.outcome in _SKIPS_SHOWN:
            lines.append(_entry_line(e, interrupted=interrupted))
            if e.outcome is Outcome.STILL_BUSY:
                lines.extend(job_line(j, machine=True) for j in e.jobs)
    return lines


def _failure_lines(report: QuietReport, best_effort: bool) -> list[str]:
    lines = []
    if report.error is not None:
        lines.append(f"error: {report.error}")
    n = len(report.failures)
    exit_note = "exit 0 (--best-effort)" if best_effort else f"exit {int(report.exit_code)}"
    busy = sum(1 for e in report.failures if e.outcome is Outcome.STILL_BUSY)
    what = "still running jobs (not drained)" if busy == n else "not confirmed quiet"
    lines.append(f"FAILED: {_processes(n)} {what}; {exit_note}")
    quieted = report.quieted_machines
    if quieted and report.deploy_id:
        shown = " ".join(quieted[:10]) + (" ..." if len(quieted) > 10 else "")
        lines.append(
            f"{plural(len(quieted), 'machine')} took the signal and stay quiet until "
            f"their processes restart (Sidekiq cannot be unquieted): finish the deploy, or "
            f"restart them: fly machine restart {shown}"
        )
    if report.deploy_id:
        lines.append("no Sidekiq deploy mark was written for this release")
    return lines


_SKIPS = frozenset({Outcome.ALREADY_QUIET, Outcome.EMBEDDED, Outcome.DEAD, Outcome.UNREADABLE})
_SKIPS_SHOWN = frozenset({Outcome.EMBEDDED, Outcome.DEAD})


_EXPLAIN_INTERRUPTED = {
    Outcome.NOT_CONFIRMED: "heartbeating, but the signal was not confirmed when the run was "
    "interrupted",
    Outcome.STILL_BUSY: "took the signal, but jobs were still running when the run was interrupted",
}


def _interrupted(report: QuietReport) -> bool:
    """Ctrl-C or TERM ended the wait, not its deadline."""
    return report.error is not None and report.error.exit_code is ExitCode.INTERRUPTED


def _entry_line(e: ProcessOutcome, *, interrupted: bool = False) -> str:
    p = e.process
    explain = (_EXPLAIN_INTERRUPTED if interrupted else {}).get(e.outcome) or _EXPLAIN.get(
        e.outcome, ""
    )
    why = e.reason or p.problem or explain
    if e.outcome is not Outcome.UNREADABLE and e.reason and explain:
        why = f"{explain} ({e.reason})"
    after = f" after {e.confirmed_after_s:.1f}s" if e.confirmed_after_s is not None else ""
    pushes = f", pushed {e.pushes}x" if e.pushes > 1 else ""
    text = f"  {e.outcome.value.upper():<14} {p.identity} ({_version(p)}){after}{pushes}"
    return f"{text}: {why}" if why else text
