"""Which processes a command is about: the one filter type of quiet, status, rejoin and
recover, the one count of what it left out, the scope it names in the deploy ledger,
and the refusal of filters that match nothing (a typo, not an empty fleet). Pure."""

from __future__ import annotations

import dataclasses
import fnmatch
import urllib.parse
from collections.abc import Iterable, Sequence

from quiesce.model.fleet import ProcessRecord


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

    def split(
        self, processes: Iterable[ProcessRecord]
    ) -> tuple[list[ProcessRecord], tuple[tuple[str, int], ...]]:
        """The one count of what the filters left out: the selected processes, in order,
        and per filter (as its option) how many it took out."""
        kept: list[ProcessRecord] = []
        counts: dict[str, int] = {}
        for proc in processes:
            reason = self.excluded_by(proc)
            if reason is None:
                kept.append(proc)
            else:
                counts[reason] = counts.get(reason, 0) + 1
        return kept, tuple(counts.items())

    def admits(self, hostname: str, tag: str, labels: Sequence[str] = ()) -> bool:
        """The same rule for what a deploy record kept of a process (hostname, tag,
        labels; no queues or identity filter applies there): for the Machines a rejoin
        expects back."""
        if self.identities or self.queues:
            return False
        if self.hostnames and not any(fnmatch.fnmatchcase(hostname, g) for g in self.hostnames):
            return False
        if self.tags and tag not in self.tags:
            return False
        if self.labels and not set(self.labels) & set(labels):
            return False
        if any(fnmatch.fnmatchcase(hostname, g) for g in self.exclude_hostnames):
            return False
        return tag not in self.exclude_tags and not set(self.exclude_labels) & set(labels)

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


NO_FILTERS = Filters()


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
