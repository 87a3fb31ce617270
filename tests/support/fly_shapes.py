"""Fly Machines API replies shaped after fly.md (the OpenAPI ``Machine`` schema)."""

from __future__ import annotations

from typing import Any

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
    """One Machine; ``image_ref=False`` leaves the top-level ``image_ref`` out (then only
    ``config.image`` names the image)."""
    repository, tag = image.split("/", 1)[1].rsplit(":", 1)
    data: dict[str, Any] = {
        "id": mid,
        "name": f"name-{mid}",
        "state": state,
        "region": "iad",
        "instance_id": "01J9Z3K8Q7V6T5R4P3N2M1L0KJ",
        "created_at": "2025-03-01T10:00:00Z",
        "updated_at": "2025-03-04T16:21:07Z",
        "config": {
            "image": image,
            "env": {"FLY_PROCESS_GROUP": group},
            "metadata": {
                "fly_platform_version": "v2",
                "fly_process_group": group,
                "fly_release_id": "Nj7oGMlVVpZ7JToybJoXLLjMl",
                "fly_release_version": release,
            },
        },
        "checks": [],
        "events": [],
    }
    if image_ref:
        data["image_ref"] = {
            "registry": "registry.fly.io",
            "repository": repository,
            "tag": tag,
            "digest": "sha256:5615ef423504d56ae345ccff9db54796d589965da953297f5785042df0628452",
            "labels": {},
        }
    return data
