"""The fleet model: one decoded record per Sidekiq process, and pure queries over them.

Nothing here does I/O. Times are seconds; "ages" are measured on the Redis server's
clock (from key TTLs), never by comparing a process's clock with ours.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quiesce.sidekiq.work import WorkRead

BEAT_MARGIN_S = 5.0
"""How late a beat may be before it counts as overdue. ``BEAT_PAUSE`` is the sleep *between*
beats: the beat's own work (stats, work hash, PING, the registry MULTI) comes on top and
takes a few seconds on a saturated host or a slow Redis (protocol doc 1.2)."""

BEAT_CLOCK_SLACK_S = 0.25
"""A snapshot reads TIME before the PTTLs: a beat's Redis time is known to within this."""


class ProcessState(enum.StrEnum):
    RUNNING = "running"
    QUIET = "quiet"
    """Quiet or stopping: Sidekiq reports both as ``quiet = "true"``."""
    DEAD = "dead"
    """Still a member of ``processes`` but its hash expired: it stopped beating >60 s ago."""
    EMBEDDED = "embedded"
    """``Sidekiq.configure_embed``: ignores signals sent through Redis."""
    STALLED = "stalled"
    """The hash exists but the next beat is overdue (``beat_overdue``)."""
    QUIETING = "quieting"
    """Not quiet yet, but a beat popped quiesce's TSTP: Sidekiq writes ``quiet = "true"``
    on its next beat. Needs the latest deploy record (see ``is_quieting``)."""
    UNREADABLE = "unreadable"
    """The hash could not be decoded (malformed JSON, unknown version, bad fields)."""


@dataclasses.dataclass(frozen=True, slots=True)
class SidekiqVersion:
    text: str
    """``"7.3.10"`` read from ``info.version``, or a range such as ``"6.2-7.0.1"`` when inferred."""
    inferred: bool
    beat_interval_s: float
    """The longest heartbeat interval this version can have (5 s up to 6.x, 10 s from 7.0)."""
    beat_interval_min_s: float | None = None
    """For an inferred range: the shortest interval it may have (6.x 5 s where 7.0.0/7.0.1
    beat every 10 s); None when the interval is known."""


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
    pending_signals: tuple[str, ...] = ()
    """Names still queued in ``<identity>-signals``, oldest first (the next one popped)."""
    problem: str | None = None
    """Why the record is unreadable; ``None`` for a healthy decode."""
    notes: tuple[str, ...] = ()
    """Odd fields that do not make the record untrustworthy (``rss=lots``): shown, while
    the process still counts by its state (a beating process stays a consumer)."""
    quieting: bool = False
    """Set when the snapshot is assembled with the latest deploy record (``is_quieting``)."""
    work: WorkRead | None = None
    """Its running jobs (``quiesce.sidekiq.work``), when the snapshot read the work hashes."""

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
        # An overdue beat first: a process killed mid-job keeps its last "quiet" hash for
        # up to 60 s, and reading it as quiet would hide that it is gone.
        if self.is_stalled:
            return ProcessState.STALLED
        if self.quiet:
            return ProcessState.QUIET
        if self.quieting:
            return ProcessState.QUIETING
        return ProcessState.RUNNING

    @property
    def beat_interval_s(self) -> float:
        """This process's heartbeat interval (the slower 10 s when the version is unknown)."""
        return self.version.beat_interval_s if self.version else 10.0

    @property
    def is_stalled(self) -> bool:
        return beat_overdue(self.beat_age_s, self.beat_interval_s)


def beat_overdue(beat_age_s: float | None, interval_s: float) -> bool:
    """The next beat should have come by now: more than ``interval + BEAT_MARGIN_S`` since
    the last one (Redis clock). Unknown age (no TTL and no ``beat``) is not overdue."""
    return beat_age_s is not None and beat_age_s > interval_s + BEAT_MARGIN_S


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
    run_id: str | None = None
    """``INFO server`` ``run_id``: changes when Redis restarts (and loses unsaved data)."""
