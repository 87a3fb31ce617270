"""The deploy record quiesce keeps, and Sidekiq's deploy-mark stamp (pure).

A record is written when ``quiesce quiet`` pushes its signals and rewritten with the
outcomes when the wait ends, so a release command killed mid-wait still leaves one.
Later commands read it to tell pre-deploy processes from new ones, to say how long a
process has been quiet, and to compare Redis connection counts with the baseline.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

from quiesce.fleet import ProcessRecord, ServerInfo

SCHEMA = 1


def new_deploy_id(now: float, suffix: str) -> str:
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{suffix}"


def mark_stamp(now: float) -> tuple[str, str]:
    """``(datecode, stamp)`` as ``Sidekiq::Deploy#mark`` computes them.

    The time is floored to the minute (so N processes marking one deploy make one
    mark); the hash is ``<YYYYMMDD>-marks`` and the field Ruby's ``Time#iso8601``
    of the UTC minute, e.g. ``2026-11-26T07:14:00Z``.
    """
    floor = dt.datetime.fromtimestamp(now, dt.UTC).replace(second=0, microsecond=0)
    return floor.strftime("%Y%m%d"), floor.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass(slots=True)
class DeployRecord:
    deploy_id: str
    release: str | None
    strategy: str
    started_at: float
    until: str
    timeout_s: float
    fleet: list[dict[str, Any]]
    servers: list[dict[str, Any]]
    outcomes: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    finished_at: float | None = None
    state: str = "pending"
    failure: str | None = None
    quiesce_version: str = ""
    schema: int = SCHEMA

    @classmethod
    def start(
        cls,
        *,
        deploy_id: str,
        release: str | None,
        strategy: str,
        started_at: float,
        until: str,
        timeout_s: float,
        processes: Sequence[ProcessRecord],
        servers: Sequence[ServerInfo],
        quiesce_version: str,
    ) -> DeployRecord:
        return cls(
            deploy_id=deploy_id,
            release=release,
            strategy=strategy,
            started_at=started_at,
            until=until,
            timeout_s=timeout_s,
            fleet=[p.fleet_entry() for p in processes if p.alive],
            servers=[dataclasses.asdict(s) for s in servers],
            quiesce_version=quiesce_version,
        )

    def to_json(self) -> str:
        # Shallow on purpose: the fields already hold plain JSON values (asdict deep-copies).
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    @staticmethod
    def parse(text: str | None) -> Mapping[str, Any] | None:
        """Records are read as plain mappings: a newer quiesce may have added fields."""
        if not text:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None


def quiet_since(deploy: Mapping[str, Any] | None, identity: str) -> float | None:
    """When the latest deploy confirmed this process quiet (Redis clock), if it did."""
    if not deploy:
        return None
    outcomes = deploy.get("outcomes")
    entry = outcomes.get(identity) if isinstance(outcomes, dict) else None
    if not isinstance(entry, dict):
        return None
    at = entry.get("confirmed_at")
    return float(at) if isinstance(at, int | float) else None
