"""Which processes ``quiesce quiet`` signals, and why the others are left alone (pure)."""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import urllib.parse
from collections.abc import Sequence

from quiesce.model.fleet import ProcessRecord, ProcessState
from quiesce.model.record import DeployRecord
from quiesce.model.snapshot import FleetSnapshot


class Outcome(enum.StrEnum):
    CONFIRMED = "confirmed"
    ALREADY_QUIET = "already_quiet"
    VANISHED = "vanished"
    """Exited during the wait: fine for a deploy."""
    EMBEDDED = "embedded"
    """Skipped: Sidekiq ignores remote signals in embedded mode (7.0.3+)."""
    DEAD = "dead"
    """A leftover member of ``processes`` whose hash already expired: nothing to signal."""
    STALLED = "stalled"
    """Its own heartbeat is overdue (its version's interval plus a margin): hung or gone."""
    UNREADABLE = "unreadable"
    NOT_CONFIRMED = "not_confirmed"
    """Heartbeating, but the signal was not confirmed before the deadline."""
    SIGNAL_FAILED = "signal_failed"
    """Redis refused this process's push (e.g. its signal list is not a list)."""
    NOT_SIGNALLED = "not_signalled"
    """The push never went in (Redis unreachable until the deadline)."""
    LOST = "lost"
    """Left the registry with its hash (Redis lost its data, or the process died) and did
    not come back before the deadline: not a clean exit, so not counted as gone."""
    SIGNALLED = "signalled"
    """``--no-wait``: pushed, not checked."""
    PLANNED = "planned"
    """``--dry-run``: would be signalled."""
    PENDING = "pending"
    DRAINED = "drained"
    """``--until drained``: quiet, and no job running any more."""
    STILL_BUSY = "still_busy"
    """``--until drained``: took the signal, but jobs were still running at the deadline."""


FAILED_OUTCOMES = frozenset(
    {
        Outcome.STALLED,
        Outcome.UNREADABLE,
        Outcome.NOT_CONFIRMED,
        Outcome.SIGNAL_FAILED,
        Outcome.NOT_SIGNALLED,
        Outcome.LOST,
        Outcome.STILL_BUSY,
    }
)
"""Outcomes that make ``quiesce quiet`` exit non-zero (the process may still take jobs)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Filters:
    """Repeat a filter to accept any of its values; different filters must all match."""

    hostnames: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()
    identities: tuple[str, ...] = ()
    exclude_hostnames: tuple[str, ...] = ()
    """Globs: a process whose hostname matches any of them is left alone."""
    exclude_tags: tuple[str, ...] = ()
    exclude_labels: tuple[str, ...] = ()
    exclude_queues: tuple[str, ...] = ()
    """A process listening on any of these queues is left alone."""

    @property
    def active(self) -> bool:
        return bool(
            self.hostnames
            or self.tags
            or self.labels
            or self.queues
            or self.identities
            or self.excludes
        )

    @property
    def excludes(self) -> bool:
        return bool(
            self.exclude_hostnames
            or self.exclude_tags
            or self.exclude_labels
            or self.exclude_queues
        )

    @property
    def needs_info(self) -> bool:
        """Tag, label and queue live in the ``info`` JSON; hostname and identity do not."""
        return bool(self.tags or self.labels or self.queues)

    def excluded_by(self, proc: ProcessRecord) -> str | None:
        """The first filter that leaves ``proc`` out, as its option (``--exclude-tag
        critical``), or None when the process is selected."""
        if not self.matches(proc):
            return "not matching --hostname/--tag/--label/--queue/--identity"
        for glob in self.exclude_hostnames:
            if fnmatch.fnmatchcase(proc.hostname, glob):
                return f"--exclude-hostname {glob}"
        if proc.problem is not None:
            return None  # tag, labels and queues unknown: never excluded on a guess
        for tag in self.exclude_tags:
            if proc.tag == tag:
                return f"--exclude-tag {tag}"
        for label in self.exclude_labels:
            if label in proc.labels:
                return f"--exclude-label {label}"
        for queue in self.exclude_queues:
            if queue in proc.queues:
                return f"--exclude-queue {queue}"
        return None

    def selects(self, proc: ProcessRecord) -> bool:
        return self.excluded_by(proc) is None

    def matches(self, proc: ProcessRecord) -> bool:
        """The inclusion filters only (``excluded_by`` applies the exclusions too)."""
        if self.identities and proc.identity not in self.identities:
            return False
        if self.hostnames and not any(
            fnmatch.fnmatchcase(proc.hostname, g) for g in self.hostnames
        ):
            return False
        if proc.problem is not None and self.needs_info:
            return False
        if self.tags and proc.tag not in self.tags:
            return False
        if self.labels and not set(self.labels) & set(proc.labels):
            return False
        return not self.queues or bool(set(self.queues) & set(proc.queues))


@dataclasses.dataclass(frozen=True, slots=True)
class QuietPlan:
    targets: tuple[ProcessRecord, ...]
    skipped: tuple[tuple[ProcessRecord, Outcome], ...]
    excluded: int
    """Processes the filters left out."""
    excluded_by: tuple[tuple[str, int], ...] = ()
    """Per filter (as its option), how many processes it left out, in option order."""


_SKIP_BY_STATE = {
    ProcessState.DEAD: Outcome.DEAD,
    ProcessState.UNREADABLE: Outcome.UNREADABLE,
    ProcessState.EMBEDDED: Outcome.EMBEDDED,
    ProcessState.QUIET: Outcome.ALREADY_QUIET,
}


def plan_quiet(snapshot: FleetSnapshot, filters: Filters) -> QuietPlan:
    targets: list[ProcessRecord] = []
    skipped: list[tuple[ProcessRecord, Outcome]] = []
    excluded = 0
    by_filter: dict[str, int] = {}
    for proc in sorted(snapshot.processes, key=lambda p: (p.machine, p.pid or 0, p.identity)):
        reason = filters.excluded_by(proc)
        if reason is not None:
            excluded += 1
            by_filter[reason] = by_filter.get(reason, 0) + 1
            continue
        skip = _SKIP_BY_STATE.get(proc.state)
        if skip is None:
            targets.append(proc)  # running or stalled: push, then confirm or report it
        else:
            skipped.append((proc, skip))
    return QuietPlan(tuple(targets), tuple(skipped), excluded, tuple(by_filter.items()))


_SCOPE_SAFE = "*?[]!-_.:/@+~^"


def scope_of(app: str | None, namespace: str, filters: Filters | None = None) -> str:
    """The canonical name of the fleet a command is about, stable across runs.

    The Fly app when known (``app:<name>``: every process of the app, whatever filters
    a command adds): two apps sharing a Redis never share a scope. Otherwise the
    redis-namespace plus the filters that defined the fleet, each list sorted and
    de-duplicated, values percent-escaped, in a fixed order: ``quiet --tag b --tag a``
    and ``quiet --tag a --tag b`` are one scope.
    """
    app = (app or "").strip()
    if app:
        return f"app:{app}"
    scope = f"redis-ns:{namespace.strip().rstrip(':')}"
    if filters is None:
        return scope
    parts = [
        ("hostname", filters.hostnames),
        ("tag", filters.tags),
        ("label", filters.labels),
        ("queue", filters.queues),
        ("identity", filters.identities),
        ("exclude-hostname", filters.exclude_hostnames),
        ("exclude-tag", filters.exclude_tags),
        ("exclude-label", filters.exclude_labels),
        ("exclude-queue", filters.exclude_queues),
    ]
    for name, values in parts:
        if values:
            shown = ",".join(urllib.parse.quote(v, safe=_SCOPE_SAFE) for v in sorted(set(values)))
            scope += f"|{name}={shown}"
    return scope


# -- checks before anything is signalled -------------------------------------------------


def unmatched_filters(processes: Sequence[ProcessRecord], filters: Filters) -> str | None:
    """Filters that leave nothing of a live fleet are a typo, not an empty fleet: the
    one-line reason (listing what exists), or None. Shared by every command that takes
    filters (quiet, status, rejoin, recover)."""
    live = [p for p in processes if p.alive]
    if not live or not filters.active or any(filters.selects(p) for p in live):
        return None
    return f"the filters match none of the {len(live)} live processes; " + "; ".join(
        existing_values(live)
    )


def existing_values(live: Sequence[ProcessRecord]) -> list[str]:
    """The tags, labels and hostnames that do exist (a few of each)."""

    def few(values: set[str]) -> str:
        shown = sorted(v for v in values if v)[:8]
        more = len(values) - len(shown)
        return ", ".join(shown) + (f" (+{more} more)" if more > 0 else "") or "(none)"

    return [
        f"tags: {few({p.tag for p in live})}",
        f"labels: {few({x for p in live for x in p.labels})}",
        f"hostnames: {few({p.hostname for p in live})}",
    ]


_TARGETED = frozenset(
    {
        Outcome.CONFIRMED,
        Outcome.ALREADY_QUIET,
        Outcome.DRAINED,
        Outcome.SIGNALLED,
        Outcome.STILL_BUSY,
        Outcome.VANISHED,
        Outcome.NOT_CONFIRMED,
        Outcome.PENDING,
        Outcome.STALLED,
        Outcome.SIGNAL_FAILED,
        Outcome.NOT_SIGNALLED,
        Outcome.LOST,
    }
)
"""Outcomes of processes a deploy found live and meant to quiet."""


def live_targets(plan: QuietPlan) -> int:
    """The live processes of the scope this run is about: to signal, or already quiet."""
    return len(plan.targets) + sum(1 for _, o in plan.skipped if o is Outcome.ALREADY_QUIET)


def targeted(record: DeployRecord) -> int:
    """How many live processes a recorded deploy meant to quiet."""
    return sum(1 for e in record.outcomes.values() if e.outcome in _TARGETED)


def shrink_warning(previous: DeployRecord | None, live: int) -> str | None:
    """Far fewer live targets than the scope's previous deploy quieted (under half): said,
    not refused -- fleets autoscale between deploys (``--min-processes`` refuses)."""
    if previous is None:
        return None
    before = targeted(previous)
    if before == 0 or live * 2 >= before:
        return None
    return (
        f"only {live} live process{'es' if live != 1 else ''} to quiet, but the previous "
        f"deploy of this scope ({previous.deploy_id}) quieted {before}: is the target right "
        "(--namespace, database, filters)?"
    )
