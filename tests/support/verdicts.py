"""Builders for the verdict tests (rejoin, recover, status, exporter): processes, deploy
records with a Fly target, and Fly Machines in the documented shapes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from quiesce.model.fleet import ProcessRecord, SidekiqVersion
from quiesce.model.machines import FlyMachine
from quiesce.model.record import DeployRecord
from quiesce.model.record_entries import FleetEntry, FlyTarget, MachineEntry, OutcomeEntry
from quiesce.sim.fly import machine_json as sim_machine_json

T0 = 1_800_000_000.0
"""The quiet (the record's start, Redis clock)."""
NOW = T0 + 300
APP = "my-app"
OLD_RELEASE, NEW_RELEASE = "63", "64"


def image(release: str) -> str:
    return f"registry.fly.io/{APP}:deployment-{release}"


def proc(
    host: str,
    pid: int = 1,
    nonce: str = "old",
    *,
    started: float = T0 - 3600,
    quiet: bool = False,
    busy: int = 0,
    tag: str = "",
    labels: tuple[str, ...] = (),
    skew: float = 0.0,
    version: str = "6.4.1",
    beat_age: float | None = 2.0,
    beats_for: float | None = None,
    taken: float = NOW,
    alive: bool = True,
) -> ProcessRecord:
    """A live process; ``skew``: its clock minus Redis's; ``beats_for``: seconds from its
    start to its last beat (default: up to ``taken - beat_age``, so it kept beating)."""
    interval = 5.0 if version.startswith("6") else 10.0
    last = taken - (beat_age or 0.0)
    beat = started + beats_for if beats_for is not None else last
    return ProcessRecord(
        identity=f"{host}:{pid}:{nonce}",
        hostname=host,
        pid=pid,
        alive=alive,
        tag=tag,
        labels=labels,
        version=SidekiqVersion(version, False, interval),
        concurrency=5,
        busy=busy,
        beat=None if beat_age is None else beat + skew,
        beat_age_s=beat_age,
        quiet=quiet,
        started_at=started + skew,
    )


def new(host: str, pid: int = 2, *, at: float = T0 + 30, **kw: Any) -> ProcessRecord:
    return proc(host, pid, f"new{pid}", started=at, **kw)


def quieted(p: ProcessRecord, busy: int = 0) -> ProcessRecord:
    return proc(
        p.hostname, p.pid or 1, p.identity.rsplit(":", 1)[1], quiet=True, busy=busy, tag=p.tag
    )


def record(
    before: Sequence[ProcessRecord],
    *,
    strategy: str = "immediate",
    groups: Mapping[str, str] | None = None,
    target: str | None = NEW_RELEASE,
    deploy_id: str = "20270115T080000Z-abc123",
    started_at: float = T0,
    release: str | None = None,
) -> DeployRecord:
    """``groups``: Machine id -> Fly process group as Fly listed it at the quiet (None:
    the release command did not reach Fly); ``target``: the release being deployed."""
    machines = {
        mid: MachineEntry(mid, g, image(OLD_RELEASE), OLD_RELEASE, "started")
        for mid, g in (groups or {}).items()
    }
    return DeployRecord(
        deploy_id=deploy_id,
        release=release if release is not None else (image(target) if target else None),
        strategy=strategy,
        started_at=started_at,
        until="delivered",
        timeout_s=30.0,
        fleet=tuple(FleetEntry.from_process(p) for p in before),
        outcomes={
            p.identity: OutcomeEntry(
                "confirmed", pushed_at=started_at + 0.5, confirmed_at=started_at + 5.0
            )
            for p in before
        },
        target=FlyTarget(APP, image(target), target, "release0001") if target else None,
        machines=machines,
        fly_checked=groups is not None,
    )


def fly(
    mid: str, state: str = "started", group: str = "worker", release: str = NEW_RELEASE
) -> FlyMachine:
    return FlyMachine(
        id=mid,
        state=state,
        process_group=group,
        region="iad",
        release_version=release,
        image_ref=f"{APP}:deployment-{release}",
    )


def machine_json(
    mid: str, group: str = "worker", state: str = "started", release: str = NEW_RELEASE
) -> dict[str, Any]:
    """A Machine on ``release`` (the shape is ``quiesce.sim.fly``'s)."""
    return sim_machine_json(
        mid,
        group=group,
        state=state,
        app=APP,
        release=release,
        digest="sha256:" + release.rjust(64, "0"),
        metadata={"fly_release_id": f"rel-{release}"},
    )
