"""Connection counts: Sidekiq's pool sizes, ``CLIENT LIST`` by library, and the peak a
bluegreen deploy would reach (pure).

During ``bluegreen`` the old and new Machines run side by side, so every Sidekiq
process's pools exist twice for a while. The projection counts today's Sidekiq pools
a second time on top of what the server holds now.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping, Sequence

from quiesce.model.fleet import ProcessRecord
from quiesce.sidekiq.versions import parse_version

DEFAULT_CONCURRENCY = 5
"""Sidekiq's default ``concurrency`` (7.0+), assumed where a process does not say."""

INTERNAL_POOL_FROM = (7, 1, 1)
"""Sidekiq's internal pool grew from 5 to 10 connections in 7.1.1 (protocol doc 4.6).
Up to 6.x the one pool was ``concurrency + 5``: the same 5 on top."""

MAX_LIBRARIES = 20
"""``quiesce_redis_clients`` keeps this many library names; the rest count as ``other``."""


def pool_overhead(proc: ProcessRecord) -> int:
    """Connections a Sidekiq process holds beyond its threads (5 or 10; 10 when unknown)."""
    return _overhead(proc.version.text) if proc.version is not None else 10


@functools.lru_cache(maxsize=256)
def _overhead(version_text: str) -> int:
    version = parse_version(version_text)
    if version is None:
        return 10
    return 5 if version < INTERNAL_POOL_FROM else 10


def pool_size(proc: ProcessRecord) -> int:
    """The most Redis connections one process opens: its threads plus the overhead.
    Pools are lazy, so the server usually sees fewer: this is the ceiling."""
    threads = proc.concurrency if proc.concurrency is not None else DEFAULT_CONCURRENCY
    return threads + pool_overhead(proc)


def sidekiq_pools(processes: Iterable[ProcessRecord]) -> int:
    """The pool ceiling of every live process (dead ones hold nothing)."""
    return sum(pool_size(p) for p in processes if p.alive)


def library_of(fields: Mapping[str, str]) -> str:
    """A bounded label for one ``CLIENT LIST`` line: the ``lib-name`` a client announced
    (Redis 7.2+; Sidekiq 8.1.5+ sends ``redis-client(sidekiq_v8.1.5)``), else Sidekiq's
    old ``Sidekiq-server-PID-<pid>`` client name (5.2-6.0.6) as ``sidekiq``, else
    ``unknown``. Never a client name: those are free text."""
    lib = fields.get("lib-name", "")
    if lib:
        return lib
    name = fields.get("name", "")
    if name.startswith(("Sidekiq-server-PID-", "Sidekiq-client-PID-")):
        return "sidekiq"
    return "unknown"


def parse_client_list(text: str) -> list[dict[str, str]]:
    """``CLIENT LIST`` lines as ``field -> value`` (values never contain spaces, except
    ``name`` on servers that allow it, which is read only by prefix)."""
    out = []
    for line in text.splitlines():
        fields: dict[str, str] = {}
        for part in line.split(" "):
            key, sep, value = part.partition("=")
            if sep:
                fields[key] = value
        if fields:
            out.append(fields)
    return out


def clients_by_library(text: str, *, limit: int = MAX_LIBRARIES) -> dict[str, int]:
    counts: dict[str, int] = {}
    for fields in parse_client_list(text):
        lib = library_of(fields)
        counts[lib] = counts.get(lib, 0) + 1
    if len(counts) <= limit:
        return counts
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = dict(ranked[: limit - 1])
    kept["other"] = sum(n for _, n in ranked[limit - 1 :])
    return kept


@dataclasses.dataclass(frozen=True, slots=True)
class Projection:
    """The peak a bluegreen deploy would reach on one connection limit."""

    resource: str
    """``redis <masked url>`` or ``postgres``."""
    current: int
    added: int
    """Connections the second generation adds while both run."""
    limit: int | None
    """``maxclients`` / ``max_connections`` (None: the server would not say)."""
    basis: str
    """How ``added`` was counted, for the printout."""

    @property
    def peak(self) -> int:
        return self.current + self.added

    @property
    def ratio(self) -> float | None:
        return None if not self.limit else self.peak / self.limit

    def exceeds(self, max_ratio: float) -> bool:
        ratio = self.ratio
        return ratio is not None and ratio > max_ratio

    def describe(self) -> str:
        limit = "unknown limit" if self.limit is None else f"limit {self.limit}"
        ratio = "" if self.ratio is None else f" ({self.ratio:.0%} of the limit)"
        return (
            f"{self.resource}: {self.current} now + {self.added} ({self.basis}) "
            f"= {self.peak} at the peak, {limit}{ratio}"
        )


def project_redis(
    label: str,
    connected_clients: int | None,
    maxclients: int | None,
    processes: Sequence[ProcessRecord],
) -> Projection:
    """Today's clients plus a second copy of every live Sidekiq process's pools."""
    mine = [p for p in processes if p.alive and p.redis in ("", label)]
    added = sidekiq_pools(mine)
    return Projection(
        resource=f"redis {label}",
        current=connected_clients or 0,
        added=added,
        limit=maxclients,
        basis=f"{len(mine)} Sidekiq processes' pools again",
    )


def project_postgres(backends: int, max_connections: int | None) -> Projection:
    """Every client backend counted twice: a bluegreen deploy doubles every Machine of the
    app (web and workers), and each holds its database pool."""
    return Projection(
        resource="postgres",
        current=backends,
        added=backends,
        limit=max_connections,
        basis="every client backend again",
    )


def refusals(projections: Iterable[Projection], max_ratio: float) -> list[Projection]:
    return [p for p in projections if p.exceeds(max_ratio)]


MAX_APPLICATIONS = 50
"""``quiesce_postgres_backends`` keeps this many application names; the rest are ``other``."""


@dataclasses.dataclass(frozen=True, slots=True)
class PostgresStats:
    backends: dict[str, int]
    """Client backends by ``application_name`` ("" when unset), ours excluded."""
    max_connections: int
    reserved: int
    """``superuser_reserved_connections``: ordinary users get ``max_connections - reserved``."""

    @property
    def total(self) -> int:
        return sum(self.backends.values())


def bounded(backends: dict[str, int], limit: int = MAX_APPLICATIONS) -> dict[str, int]:
    if len(backends) <= limit:
        return backends
    ranked = sorted(backends.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = dict(ranked[: limit - 1])
    kept["other"] = sum(n for _, n in ranked[limit - 1 :])
    return kept
