"""A fleet snapshot: every process read from one or more Redis servers at one moment, with
the deploy record they are judged against. Pure: ``taken_at`` is the Redis clock."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from quiesce.model.fleet import BEAT_CLOCK_SLACK_S, ProcessRecord, ProcessState, ServerInfo
from quiesce.model.ledger import LEDGER_SIZE
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
    """The scope's newest record: ``history[0]`` (kept apart: most readers need only it)."""
    deploy_problem: str | None = None
    """Why a stored deploy record was ignored or partly dropped (one line), if it was."""
    history: tuple[DeployRecord, ...] = ()
    """The scope's records, newest first (``record.LEDGER_SIZE`` at most); without a
    scope, or for a scope with no ledger yet, the pre-ledger latest record alone."""
    scope: str | None = None
    """The scope whose history was read (None: none given)."""
    legacy_history: bool = False
    """The history is the pre-ledger ``quiesce:deploy:latest`` record (older quiesce)."""
    ledger_drop: tuple[str, ...] = ()
    """Ledger entries the next write deletes (unreadable, expired, past the caps)."""
    keyspace: tuple[tuple[str, int, int], ...] = ()
    """Per server: ``(label, db, keys)`` of the databases ``INFO keyspace`` lists."""
    other_scope: str | None = None
    """No history for ``scope``, but the newest deploy in this Redis is of this scope."""

    def __post_init__(self) -> None:
        # One source of truth for callers that set only one of the two.
        if self.history and self.latest_deploy is None:
            object.__setattr__(self, "latest_deploy", self.history[0])
        elif self.latest_deploy is not None and not self.history:
            object.__setattr__(self, "history", (self.latest_deploy,))

    @classmethod
    def merge(cls, parts: Sequence[FleetSnapshot]) -> FleetSnapshot:
        """One view over several Redis servers (apps that shard Sidekiq).

        Every server holds the same records (each deploy writes to each): the histories
        are joined by deploy id, newest first; every server's processes are judged
        against the newest on that server's own clock (``taken_at``).
        """
        by_id: dict[str, DeployRecord] = {}
        for part in parts:
            for record in part.history:
                by_id.setdefault(record.deploy_id, record)
        history = tuple(
            sorted(by_id.values(), key=lambda d: (d.started_at, d.deploy_id), reverse=True)
        )[:LEDGER_SIZE]
        latest = history[0] if history else None
        problems = [p.deploy_problem for p in parts if p.deploy_problem]
        others = [p for p in parts if p.other_scope is not None]
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
            history=history,
            scope=next((p.scope for p in parts), None),
            legacy_history=any(p.legacy_history for p in parts),
            ledger_drop=tuple(dict.fromkeys(d for p in parts for d in p.ledger_drop)),
            keyspace=tuple(k for p in parts for k in p.keyspace),
            other_scope=others[0].other_scope if others and not history else None,
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
