"""The fleet model: one decoded record per Sidekiq process, and pure queries over them.

Nothing here does I/O. Times are seconds; "ages" are measured on the Redis server's
clock (from key TTLs), never by comparing a process's clock with ours.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

STALL_MARGIN_S = 5.0
"""Slack on top of one beat interval before a beat counts as overdue."""


class ProcessState(enum.StrEnum):
    RUNNING = "running"
    QUIET = "quiet"
    """Quiet or stopping: Sidekiq reports both as ``quiet = "true"``."""
    DEAD = "dead"
    """Still a member of ``processes`` but its hash expired: it stopped beating >60 s ago."""
    EMBEDDED = "embedded"
    """``Sidekiq.configure_embed``: ignores signals sent through Redis."""
    STALLED = "stalled"
    """The hash exists but the last beat is more than two beats old."""
    UNREADABLE = "unreadable"
    """The hash could not be decoded (malformed JSON, unknown version, bad fields)."""


@dataclasses.dataclass(frozen=True, slots=True)
class SidekiqVersion:
    text: str
    """``"7.3.10"`` read from ``info.version``, or a range such as ``"6.2-7.0.1"`` when inferred."""
    inferred: bool
    beat_interval_s: float
    """The longest heartbeat interval this version can have (5 s up to 6.x, 10 s from 7.0)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ProcessRecord:
    identity: str
    hostname: str
    pid: int | None
    alive: bool
    """The identity hash exists (membership in ``processes`` alone proves nothing)."""
    redis: str = ""
    """Masked URL of the Redis server this process registers in."""
    tag: str = ""
    labels: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()
    capsules: tuple[str, ...] = ()
    version: SidekiqVersion | None = None
    embedded: bool = False
    concurrency: int | None = None
    busy: int | None = None
    beat: float | None = None
    """``beat`` as the process wrote it: epoch seconds on the *process's* clock."""
    beat_age_s: float | None = None
    """Seconds since the last beat, on the Redis clock (``60 - TTL``)."""
    quiet: bool = False
    rss_kib: int | None = None
    rtt_us: int | None = None
    started_at: float | None = None
    ttl_ms: int | None = None
    pending_signals: tuple[str, ...] = ()
    """Names still queued in ``<identity>-signals``, oldest first (the next one popped)."""
    problem: str | None = None
    """Why the record is unreadable; ``None`` for a healthy decode."""

    @property
    def machine(self) -> str:
        """On Fly the hostname Sidekiq reports is the Machine id."""
        return self.hostname

    @property
    def state(self) -> ProcessState:
        if not self.alive:
            return ProcessState.DEAD
        if self.problem is not None:
            return ProcessState.UNREADABLE
        if self.embedded:
            return ProcessState.EMBEDDED
        if self.quiet:
            return ProcessState.QUIET
        if self.is_stalled:
            return ProcessState.STALLED
        return ProcessState.RUNNING

    @property
    def beat_interval_s(self) -> float:
        """This process's heartbeat interval (the slower 10 s when the version is unknown)."""
        return self.version.beat_interval_s if self.version else 10.0

    @property
    def is_stalled(self) -> bool:
        return self.beat_age_s is not None and beat_overdue(self.beat_age_s, self.beat_interval_s)

    def fleet_entry(self) -> dict[str, Any]:
        """The identity-level facts a deploy record keeps about a pre-deploy process."""
        return {
            "identity": self.identity,
            "hostname": self.hostname,
            "pid": self.pid,
            "started_at": self.started_at,
            "tag": self.tag,
            "labels": list(self.labels),
            "version": self.version.text if self.version else None,
            "concurrency": self.concurrency,
            "redis": self.redis,
        }


def beat_overdue(beat_age_s: float, interval_s: float) -> bool:
    """A beat is late past its interval plus a margin: a slow beat (GC, CPU saturation, a
    slow Redis) takes seconds, so one interval alone would call healthy processes hung."""
    return beat_age_s > interval_s + STALL_MARGIN_S


def split_identity(identity: str) -> tuple[str, int | None]:
    """``host:pid:nonce`` split from the right: hostnames may contain ``:``, pid and nonce not."""
    parts = identity.rsplit(":", 2)
    if len(parts) != 3:
        return identity, None
    try:
        return parts[0], int(parts[1])
    except ValueError:
        return parts[0], None


@dataclasses.dataclass(frozen=True, slots=True)
class ServerInfo:
    redis: str
    connected_clients: int | None
    maxclients: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class FleetSnapshot:
    processes: tuple[ProcessRecord, ...]
    taken_at: float
    """Epoch seconds on the Redis clock when the snapshot was read."""
    servers: tuple[ServerInfo, ...] = ()
    latest_deploy: Mapping[str, Any] | None = None

    @classmethod
    def merge(cls, parts: Sequence[FleetSnapshot]) -> FleetSnapshot:
        """One view over several Redis servers (apps that shard Sidekiq)."""
        deploys = [p.latest_deploy for p in parts if p.latest_deploy]
        latest = max(deploys, key=lambda d: float(d.get("started_at") or 0), default=None)
        return cls(
            processes=tuple(p for part in parts for p in part.processes),
            taken_at=max((p.taken_at for p in parts), default=0.0),
            servers=tuple(s for part in parts for s in part.servers),
            latest_deploy=latest,
        )

    def by_machine(self) -> dict[str, list[ProcessRecord]]:
        machines: dict[str, list[ProcessRecord]] = {}
        for proc in sorted(self.processes, key=lambda p: (p.machine, p.pid or 0, p.identity)):
            machines.setdefault(proc.machine, []).append(proc)
        return machines


def count_states(processes: Iterable[ProcessRecord]) -> dict[ProcessState, int]:
    counts = dict.fromkeys(ProcessState, 0)
    for proc in processes:
        counts[proc.state] += 1
    return counts
