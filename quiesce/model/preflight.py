"""The bluegreen preflight of ``quiesce quiet``: project the connection peak before pushing.

During ``bluegreen`` the new Machines start while the old ones still run, so every
Sidekiq process's Redis pools (and the app's Postgres pools) exist twice for a while.
``quiet --strategy bluegreen`` prints the projected peak per limit; with
``--max-connections-ratio R`` it refuses (``ConnectionLimit``, exit 9, nothing pushed)
when a peak passes ``R`` of its limit. The projection is ``connections.project_*``
(pure); this module only gathers the numbers and decides.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from quiesce.errors import ConnectionLimit, QuiesceError
from quiesce.model.capacity import (
    PostgresStats,
    Projection,
    project_postgres,
    project_redis,
    refusals,
)
from quiesce.model.snapshot import FleetSnapshot


def projections(fleet: FleetSnapshot, postgres: PostgresStats | None = None) -> list[Projection]:
    """One projection per Redis server of the snapshot, and Postgres when read."""
    out = [
        project_redis(s.redis, s.connected_clients, s.maxclients, fleet.processes)
        for s in fleet.servers
    ]
    if postgres is not None:
        limit = postgres.max_connections - postgres.reserved
        out.append(project_postgres(postgres.total, limit if limit > 0 else None))
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class BlueGreenPreflight:
    """The hook ``quiet_run.quiet_fleet`` calls with the snapshot, before any push."""

    max_ratio: float | None
    echo: Callable[[str], None]
    read_postgres: Callable[[], PostgresStats] | None = None

    def __call__(self, fleet: FleetSnapshot) -> None:
        stats = None
        if self.read_postgres is not None:
            try:
                stats = self.read_postgres()
            except QuiesceError as exc:
                if self.max_ratio is not None:  # asked to check, and cannot: do not deploy
                    raise ConnectionLimit(f"{exc}; nothing was signalled") from exc
                self.echo(f"bluegreen preflight: {exc}; PostgreSQL not projected")
        found = projections(fleet, stats)
        for p in found:
            self.echo(f"bluegreen preflight: {p.describe()}")
        if self.max_ratio is None:
            return
        unknown = [p for p in found if p.limit is None]
        for p in unknown:
            self.echo(f"bluegreen preflight: {p.resource}: limit unknown, not checked")
        over = refusals(found, self.max_ratio)
        if over:
            worst = ", ".join(f"{p.resource} {p.peak}/{p.limit}" for p in over)
            raise ConnectionLimit(
                f"bluegreen peak over {self.max_ratio:g} of the limit ({worst}); "
                "nothing was signalled (--max-connections-ratio)"
            )
