"""A fleet snapshot: every process read from one or more Redis servers at one moment, with
the deploy record they are judged against. Pure: ``taken_at`` is the Redis clock."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from quiesce.model.fleet import BEAT_CLOCK_SLACK_S, ProcessRecord, ProcessState, ServerInfo
from quiesce.model.record import DeployRecord
from quiesce.sidekiq.keys import SIGNAL_TTL_S
from quiesce.sidekiq.versions import QUIET_SIGNAL


def is_quieting(proc: ProcessRecord, deploy: DeployRecord | None, taken_at: float) -> bool:
    """A live, readable, not yet quiet process whose TSTP from ``deploy`` was popped.

    ``quiesce quiet --until delivered`` confirms on the beat that pops TSTP, one beat
    before Sidekiq reports ``quiet = "true"``. Either the record says ``confirmed``, or
    its entry has ``pushed_at`` and the last beat (``taken_at - beat_age_s``, Redis clock)
    came after the push, while the signal list was alive (60 s), with no TSTP pending.
    Past that window a process that still is not quiet is no longer "quieting".
    """
    if deploy is None or not proc.alive or proc.problem is not None:
        return False
    if proc.embedded or proc.quiet or proc.beat_age_s is None:
        return False
    entry = deploy.outcomes.get(proc.identity)
    if entry is None:
        return False
    anchor = entry.pushed_at if entry.pushed_at is not None else entry.confirmed_at
    last_beat = taken_at - proc.beat_age_s
    if anchor is None or last_beat >= anchor + SIGNAL_TTL_S:
        return False
    if entry.outcome == "confirmed":
        return True
    return (
        entry.pushed_at is not None
        and last_beat >= entry.pushed_at - BEAT_CLOCK_SLACK_S
        and QUIET_SIGNAL not in proc.pending_signals
    )


def mark_quieting(
    processes: Iterable[ProcessRecord], deploy: DeployRecord | None, taken_at: float
) -> tuple[ProcessRecord, ...]:
    """``processes`` with ``quieting`` set from ``deploy`` (``taken_at``: their server's clock)."""
    out = []
    for proc in processes:
        flag = is_quieting(proc, deploy, taken_at)
        out.append(proc if flag == proc.quieting else dataclasses.replace(proc, quieting=flag))
    return tuple(out)


@dataclasses.dataclass(frozen=True, slots=True)
class FleetSnapshot:
    processes: tuple[ProcessRecord, ...]
    taken_at: float
    """Epoch seconds on the Redis clock when the snapshot was read."""
    servers: tuple[ServerInfo, ...] = ()
    latest_deploy: DeployRecord | None = None
    deploy_problem: str | None = None
    """Why a stored deploy record was ignored or partly dropped (one line), if it was."""

    @classmethod
    def merge(cls, parts: Sequence[FleetSnapshot]) -> FleetSnapshot:
        """One view over several Redis servers (apps that shard Sidekiq).

        The newest deploy record of any server is the latest; every server's processes
        are judged against it on that server's own clock (``taken_at``).
        """
        deploys = [p.latest_deploy for p in parts if p.latest_deploy is not None]
        latest = max(deploys, key=lambda d: d.started_at, default=None)
        problems = [p.deploy_problem for p in parts if p.deploy_problem]
        return cls(
            processes=tuple(
                proc
                for part in parts
                for proc in mark_quieting(part.processes, latest, part.taken_at)
            ),
            taken_at=max((p.taken_at for p in parts), default=0.0),
            servers=tuple(s for part in parts for s in part.servers),
            latest_deploy=latest,
            deploy_problem="; ".join(problems) or None,
        )

    def by_machine(self) -> dict[str, list[ProcessRecord]]:
        machines: dict[str, list[ProcessRecord]] = {}
        for proc in sorted(self.processes, key=lambda p: (p.machine, p.pid or 0, p.identity)):
            machines.setdefault(proc.machine, []).append(proc)
        return machines


_STATES = tuple(ProcessState)
"""Iterating an enum class runs Python code per member: views count per Machine."""


def count_states(processes: Iterable[ProcessRecord]) -> dict[ProcessState, int]:
    counts = dict.fromkeys(_STATES, 0)
    for proc in processes:
        counts[proc.state] += 1
    return counts
