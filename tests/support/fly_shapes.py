"""Fly Machines API replies shaped after fly.md (the OpenAPI ``Machine`` schema)."""

from __future__ import annotations

from typing import Any

from quiesce.sim.fly import machine_json as sim_machine_json

IMAGE_NEW = "registry.fly.io/my-app:deployment-01JNEWNEWNEWNEWNEWNEWNEWNEW"
IMAGE_OLD = "registry.fly.io/my-app:deployment-01JOLDOLDOLDOLDOLDOLDOLDOLD"


def machine_json(
    mid: str,
    *,
    group: str = "worker",
    state: str = "started",
    image: str = IMAGE_OLD,
    release: str = "63",
    image_ref: bool = True,
) -> dict[str, Any]:
    """One Machine (the shape is ``quiesce.sim.fly``'s); ``image_ref=False`` leaves the
    top-level ``image_ref`` out."""
    return sim_machine_json(
        mid, group=group, state=state, image=image, release=release, image_ref=image_ref
    )
