"""Fly Machines as rejoin sees them (pure: parsing only; ``quiesce.adapters.fly`` does the HTTP).

A Machine object from ``GET /v1/apps/{app}/machines`` is large (config, events,
checks); only what rejoin needs is kept. Parsing is tolerant: a field of the wrong type
reads as unknown, and an entry without an ``id`` is dropped, never the whole list.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

EXCLUDED_GROUPS = frozenset(
    {"fly_app_release_command", "fly_app_console", "fly_app_test_machine_command"}
)
"""Process groups flyctl runs beside the app: never part of the Sidekiq fleet."""

STOPPED_STATES = frozenset({"stopped", "suspended", "created"})
"""flyctl updates these with ``skip_launch``: they stay down after the deploy."""

GONE_STATES = frozenset({"destroyed", "destroying", "replaced", "migrated"})


@dataclasses.dataclass(frozen=True, slots=True)
class FlyMachine:
    id: str
    name: str = ""
    state: str = ""
    region: str = ""
    instance_id: str = ""
    """Changes on every update (``FLY_MACHINE_VERSION``)."""
    image_ref: str = ""
    """``registry/repository:tag`` as ``FLY_IMAGE_REF`` spells it (the tag is
    ``deployment-<ULID>``), or ``@digest``; ``config.image`` when ``image_ref`` is absent."""
    process_group: str = ""
    release_version: str = ""
    """``config.metadata.fly_release_version``: the release the Machine runs."""
    updated_at: float | None = None
    canary: bool = False

    @property
    def excluded(self) -> bool:
        """Release-command, console and canary Machines are not the app's fleet."""
        return self.process_group in EXCLUDED_GROUPS or self.canary

    @property
    def stopped(self) -> bool:
        return self.state in STOPPED_STATES

    @property
    def gone(self) -> bool:
        return self.state in GONE_STATES


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _time(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def _image(data: Any) -> str:
    if isinstance(data, str):
        return data
    if not isinstance(data, Mapping):
        return ""
    repository, tag = _str(data.get("repository")), _str(data.get("tag"))
    digest, registry = _str(data.get("digest")), _str(data.get("registry"))
    # Spelled as FLY_IMAGE_REF and config.image spell it (registry/repository:tag), so
    # the image a Machine runs compares equal to the image a deploy targets.
    if registry and repository:
        repository = f"{registry}/{repository}"
    if tag:
        return f"{repository}:{tag}"
    return f"{repository}@{digest}" if digest else repository


def parse_machine(data: Any) -> FlyMachine | None:
    """One Machine object, or None when it has no id (not a Machine)."""
    if not isinstance(data, Mapping) or not _str(data.get("id")):
        return None
    config = data.get("config")
    metadata = config.get("metadata") if isinstance(config, Mapping) else None
    if not isinstance(metadata, Mapping):
        metadata = {}
    group = _str(metadata.get("fly_process_group")) or _str(metadata.get("process_group"))
    release = metadata.get("fly_release_version")
    return FlyMachine(
        id=_str(data.get("id")),
        name=_str(data.get("name")),
        state=_str(data.get("state")),
        region=_str(data.get("region")),
        instance_id=_str(data.get("instance_id")),
        # ``image_ref`` is what runs; ``config.image`` what the config asks for (the same
        # once an update finished): the second only when the first is missing.
        image_ref=_image(data.get("image_ref"))
        or (_str(config.get("image")) if isinstance(config, Mapping) else ""),
        process_group=group,
        release_version=str(release) if isinstance(release, str | int) else "",
        updated_at=_time(data.get("updated_at")),
        canary=_str(metadata.get("fly_canary")) == "true",
    )


def parse_machines(data: Any) -> tuple[list[FlyMachine], int]:
    """The app's Machines (excluded groups dropped) and how many entries were unreadable."""
    if not isinstance(data, Sequence) or isinstance(data, str | bytes):
        return [], 0
    machines, bad = [], 0
    for item in data:
        machine = parse_machine(item)
        if machine is None:
            bad += 1
        elif not machine.excluded:
            machines.append(machine)
    return machines, bad
