"""What a quiet run is asked to do and what it reports: the types its caller, the views and
the deploy record share. Pure data."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from quiesce.errors import ExitCode, QuiesceError
from quiesce.model.filters import Filters
from quiesce.model.fleet import ProcessRecord
from quiesce.model.quiet import FAILED_OUTCOMES, Outcome
from quiesce.model.snapshot import FleetSnapshot
from quiesce.model.verdict import Until
from quiesce.sidekiq.work import RunningJob

DEFAULT_QUIET_TIMEOUT_S = 30.0
"""How long ``quiet`` waits for confirmations: three Sidekiq 7+ heartbeats."""


@dataclasses.dataclass(frozen=True, slots=True)
class QuietOptions:
    filters: Filters = dataclasses.field(default_factory=Filters)
    until: Until = Until.DELIVERED
    timeout_s: float = DEFAULT_QUIET_TIMEOUT_S
    wait: bool = True
    dry_run: bool = False
    release: str | None = None
    strategy: str = "unknown"
    mark: bool = True
    allow_newer: bool = False
    default_url: str | None = None
    """Set when no URL was given and the default was used (said when the fleet is empty)."""
    kill_timeout_s: float | None = None
    """The app's Fly ``kill_timeout`` (``--kill-timeout``): running jobs are compared with it."""
    sidekiq_timeout_s: float | None = None
    """Sidekiq's shutdown timeout ``-t`` (``--sidekiq-timeout``), when known."""
    scope: str | None = None
    """The fleet's scope (``quiet.scope_of``); None: the namespace and filters'."""
    fly_app: str | None = None
    """The Fly app being deployed (``--app``, ``FLY_APP_NAME``), when known."""
    image_ref: str | None = None
    """``FLY_IMAGE_REF`` of the release Machine: the image being deployed."""
    release_machine: str | None = None
    """``FLY_MACHINE_ID`` of the release Machine (its metadata names the target release)."""
    fly_missing: str | None = None
    """Why the Fly API is not used (no token, no app), said once in the report."""
    min_processes: int | None = None
    """``--min-processes``: fewer live targets than this fails before any signal."""
    allow_empty: bool = False
    """``--allow-empty``: an empty target beside a live fleet elsewhere is not refused."""

    @property
    def reads_jobs(self) -> bool:
        return self.until is Until.DRAINED or self.kill_timeout_s is not None

    before_push: Callable[[FleetSnapshot], None] | None = None
    """Called with the snapshot before any signal (the bluegreen preflight); may raise."""


# -- what the run tells its caller while it runs ------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class Pushed:
    targets: int
    machines: int


@dataclasses.dataclass(frozen=True, slots=True)
class Progress:
    confirmed: int
    vanished: int
    pending: int
    elapsed_s: float
    remaining_s: float
    drained: int = 0
    jobs: int = 0
    """``--until drained``: jobs still running on the targets not yet drained."""
    longest_s: float | None = None
    """``--until drained``: the longest of those jobs' runtime."""
    stalled: int = 0
    """Targets whose heartbeat is overdue (hung or killed): their jobs are not counted."""


@dataclasses.dataclass(frozen=True, slots=True)
class Notice:
    """Something the operator must know now (a restart, a short timeout)."""

    text: str


Event = Pushed | Progress | Notice


@dataclasses.dataclass(frozen=True, slots=True)
class ProcessOutcome:
    process: ProcessRecord
    outcome: Outcome
    pushes: int = 0
    confirmed_after_s: float | None = None
    reason: str | None = None
    jobs: tuple[RunningJob, ...] = ()
    """``--until drained``: the jobs running at the last poll (the ones a still-busy
    process keeps running)."""
    busy: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class QuietReport:
    deploy_id: str | None
    options: QuietOptions
    snapshot: FleetSnapshot
    entries: tuple[ProcessOutcome, ...]
    excluded: int
    elapsed_s: float
    marks: tuple[str, ...] = ()
    round_trips: int = 0
    notes: tuple[str, ...] = ()
    """Restarts seen, warnings, hints: printed with the report."""
    error: QuiesceError | None = None
    """What ended the run early after signals went out (the report is still whole)."""
    record_saved: bool = True
    excluded_by: tuple[tuple[str, int], ...] = ()
    """Per filter, how many processes it left out (``plan.QuietPlan.excluded_by``)."""
    advice: tuple[str, ...] = ()
    """What stopping the Machines will do to running jobs, and what to change."""

    @property
    def failures(self) -> tuple[ProcessOutcome, ...]:
        return tuple(e for e in self.entries if e.outcome in FAILED_OUTCOMES)

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failures

    @property
    def exit_code(self) -> ExitCode:
        if self.error is not None:
            return self.error.exit_code
        return ExitCode.NOT_CONFIRMED if self.failures else ExitCode.OK

    def count(self, outcome: Outcome) -> int:
        return sum(1 for e in self.entries if e.outcome is outcome)

    @property
    def quieted_machines(self) -> tuple[str, ...]:
        """Machines with a process that took the signal: they stay quiet until restarted."""
        took = {
            Outcome.CONFIRMED,
            Outcome.SIGNALLED,
            Outcome.ALREADY_QUIET,
            Outcome.DRAINED,
            Outcome.STILL_BUSY,
        }
        return tuple(sorted({e.process.machine for e in self.entries if e.outcome in took}))
