"""Text and JSON views of a rejoin report and of a recovery (pure).

The JSON shape is a documented interface like ``render``'s: fields are only added.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from quiesce.model.rejoin import MachineRejoin, RejoinReport
from quiesce.text import duration, plural, safe
from quiesce.views import JSON_VERSION
from quiesce.views.table import Column, fit

if TYPE_CHECKING:
    from quiesce.model.recover import RecoverReport

MAX_LISTED = 50
"""Machines not back listed by name in the text report (all of them are in --json)."""


def _text(lines: Iterable[str]) -> str:
    return "\n".join(safe(line) for line in lines)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def counts_line(report: RejoinReport) -> str:
    counts = report.counts()
    states = ", ".join(f"{n} {s.value}" for s, n in counts.items() if n) or "no Machines"
    return f"{report.back} of {plural(report.expected, 'expected Machine')} back; {states}"


def progress_line(report: RejoinReport, remaining_s: float, width: int = 20) -> str:
    done = report.back / report.expected if report.expected else 1.0
    bar = "#" * round(done * width) + "-" * (width - round(done * width))
    return f"[{bar}] {counts_line(report)}; {duration(max(0.0, remaining_s))} left"


_MACHINE_COLUMNS = (
    Column("MACHINE", flex=True, min_width=10),
    Column("GROUP", drop=2, min_width=6),
    Column("STATE"),
    Column("DETAIL", drop=1),
)


def _machine_cells(m: MachineRejoin) -> list[str]:
    procs = f"{m.new_processes}/{m.old_processes} processes" if m.expected else ""
    fly = f" fly:{m.fly_state}" if m.fly_state else ""
    busy = f", {m.busy} busy" if m.busy else ""
    why = f" ({m.why})" if m.why else ""
    detail = f"{procs}{busy}{fly}{why}".strip()
    return [safe(m.machine), safe(m.group), m.state.value, safe(detail)]


_TARGET_FROM = {
    "record": "from the release command's Fly lookup",
    "fly-newest": "the newest release in Fly's list",
    "label": "the release label",
    "": "not verified",
}


def machine_lines(machines: Iterable[MachineRejoin], width: int | None = None) -> list[str]:
    """One line per Machine (no header), laid out together within ``width``."""
    rows = [_machine_cells(m) for m in machines]
    return fit(_MACHINE_COLUMNS, rows, width)[1:] if rows else []


def rejoin_text(report: RejoinReport, *, show_all: bool = False, width: int | None = None) -> str:
    lines = [
        f"deploy {report.deploy_id} release {report.release or '-'} ({report.strategy}): "
        f"quieted {duration(report.since_quiet_s)} ago",
        f"deployed: {report.target.describe()} ({_TARGET_FROM.get(report.target.source, '-')})",
        counts_line(report),
    ]
    kind = "group" if report.grouped_by == "fly" else "tag"
    for g in report.groups:
        extra = f", {g.replaced} replaced" if g.replaced else ""
        extra += f", {g.not_expected} stopped (not expected)" if g.not_expected else ""
        lines.append(f"  {kind} {g.group}: {g.back} of {g.expected} back{extra}")
    shown = report.machines if show_all else report.not_back
    if shown:
        lines.append("Machines not back:" if not show_all else "Machines:")
        lines.extend(machine_lines(shown[:MAX_LISTED], width))
        if len(shown) > MAX_LISTED:
            lines.append(f"  ... and {len(shown) - MAX_LISTED} more (--json lists them all)")
    first, last, longest = report.first_rejoin_s, report.last_rejoin_s, report.longest_pause
    if first is not None and last is not None:
        lines.append(
            f"first rejoin {duration(first)} after the quiet, last {duration(last)}"
            + (
                f"; longest pause {duration(longest.paused_s)} ({longest.machine})"
                if longest is not None
                else ""
            )
        )
    lines.extend(f"note: {n}" for n in report.notes)
    lines.append("fleet whole" if report.whole else "fleet NOT whole")
    return _text(lines)


def machine_json(m: MachineRejoin) -> dict[str, Any]:
    return {
        "machine": m.machine,
        "state": m.state.value,
        "group": m.group,
        "expected": m.expected,
        "old_processes": m.old_processes,
        "new_processes": m.new_processes,
        "busy": m.busy,
        "quiet_at": m.quiet_at,
        "rejoined_at": m.rejoined_at,
        "paused_s": _round(m.paused_s),
        "fly_state": m.fly_state,
        "region": m.region,
        "release_version": m.release_version,
        "process_group": m.process_group,
        "image_ref": m.image_ref,
        "why": m.why,
    }


def rejoin_json(report: RejoinReport) -> dict[str, Any]:
    longest = report.longest_pause
    return {
        "version": JSON_VERSION,
        "whole": report.whole,
        "deploy_id": report.deploy_id,
        "release": report.release,
        "strategy": report.strategy,
        "quiet_at": report.quiet_at,
        "now": report.now,
        "since_quiet_s": _round(report.since_quiet_s),
        "deadline": report.deadline,
        "with_fly": report.with_fly,
        "target": {
            "release_version": report.target.release_version or None,
            "image_ref": report.target.image_ref or None,
            "source": report.target.source or None,
        },
        "grouped_by": report.grouped_by,
        "expected": report.expected,
        "back": report.back,
        "counts": {s.value: n for s, n in report.counts().items()},
        "groups": [
            {
                "group": g.group,
                "expected": g.expected,
                "back": g.back,
                "not_expected": g.not_expected,
                "replaced": g.replaced,
            }
            for g in report.groups
        ],
        "first_rejoin_s": _round(report.first_rejoin_s),
        "last_rejoin_s": _round(report.last_rejoin_s),
        "longest_pause_s": _round(longest.paused_s) if longest else None,
        "longest_pause_machine": longest.machine if longest else None,
        "not_back": [m.machine for m in report.not_back],
        "machines": [machine_json(m) for m in report.machines],
        "notes": list(report.notes),
    }


def status_rejoin_lines(report: RejoinReport | None, width: int | None = None) -> list[str]:
    """``quiesce status``: the rejoin state per Machine under the deploy line."""
    if report is None:
        return []
    lines = [f"rejoin: {counts_line(report)}"]
    lines.extend(machine_lines(report.machines[:MAX_LISTED], width))
    if len(report.machines) > MAX_LISTED:
        lines.append(f"  ... and {len(report.machines) - MAX_LISTED} more (quiesce rejoin --json)")
    return lines


# -- recover ----------------------------------------------------------------------------


def recover_text(report: RecoverReport) -> str:
    lines = []
    for c in report.candidates:
        what = (
            f"{plural(len(c.identities), 'quiet process', 'quiet processes')}, "
            f"quiet {duration(c.quiet_for_s)} (deploy {c.deploy_id or '-'}), "
            f"{plural(c.busy, 'job')} running"
        )
        if report.applied:
            lines.append(f"{c.machine}: {report.results.get(c.machine, 'not done')} ({what})")
        else:
            lines.append(f"{report.verb(c.machine)} {c.machine}: {what}")
            lines.extend(f"    {job}" for job in c.jobs)
            if c.busy > len(c.jobs):
                lines.append(f"    ... and {c.busy - len(c.jobs)} more")
    for n in report.notes:
        lines.append(f"note: {n}")
    if not report.candidates:
        lines.append(
            "nothing to recover: no Machine runs only processes quiet for longer than --after"
        )
    elif not report.applied:
        lines.append("dry run: nothing done (add --yes with --restart or --stop)")
    else:
        failed = len(report.failures)
        lines.append(f"{report.action}: {len(report.candidates) - failed} done, {failed} failed")
    return _text(lines)


def recover_json(report: RecoverReport) -> dict[str, Any]:
    return {
        "version": JSON_VERSION,
        "action": report.action,
        "applied": report.applied,
        "ok": report.ok,
        "machines": [
            {
                "machine": c.machine,
                "identities": list(c.identities),
                "quiet_for_s": _round(c.quiet_for_s),
                "deploy_id": c.deploy_id or None,
                "busy": c.busy,
                "jobs": list(c.jobs),
                "result": report.results.get(c.machine),
            }
            for c in report.candidates
        ],
        "notes": list(report.notes),
    }
