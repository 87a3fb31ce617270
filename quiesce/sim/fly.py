"""The Fly Machines API's ``Machine`` object, shaped after docs/fly.md's example (the
OpenAPI ``Machine`` schema) and whole: what a simulated Fly answers, for the tests, the
benches and anyone checking quiesce against their own Machine list."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DIGEST = "sha256:5615ef423504d56ae345ccff9db54796d589965da953297f5785042df0628452"


def machine_json(
    mid: str,
    *,
    group: str = "worker",
    state: str = "started",
    app: str = "my-app",
    release: str = "63",
    image: str | None = None,
    image_ref: bool = True,
    digest: str = DIGEST,
    metadata: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One Machine. ``image`` defaults to the app's ``deployment-<release>`` tag;
    ``image_ref=False`` leaves the top-level ``image_ref`` out (then only ``config.image``
    names the image); ``metadata`` adds to ``config.metadata``."""
    image = image or f"registry.fly.io/{app}:deployment-{release}"
    registry, _, rest = image.partition("/")
    repository, _, tag = rest.rpartition(":")
    data: dict[str, Any] = {
        "id": mid,
        "name": f"name-{mid}",
        "state": state,
        "region": "iad",
        "instance_id": "01J9Z3K8Q7V6T5R4P3N2M1L0KJ",
        "private_ip": "fdaa:0:18:a7b:196:e274:9ce1:2",
        "created_at": "2025-03-01T10:00:00Z",
        "updated_at": "2025-03-04T16:21:07Z",
        "host_status": "ok",
        "config": {
            "image": image,
            "env": {"FLY_PROCESS_GROUP": group, "PRIMARY_REGION": "iad"},
            "init": {"cmd": ["bundle", "exec", "sidekiq"]},
            "guest": {"cpu_kind": "shared", "cpus": 2, "memory_mb": 2048},
            "restart": {"policy": "on-failure", "max_retries": 10},
            "metadata": {
                "fly_platform_version": "v2",
                "fly_process_group": group,
                "fly_release_id": "Nj7oGMlVVpZ7JToybJoXLLjMl",
                "fly_release_version": release,
                **(metadata or {}),
            },
        },
        "checks": [],
        "events": [
            {"type": "start", "status": "started", "source": "flyd", "timestamp": 1741105267615},
            {"type": "update", "status": "replacing", "source": "user", "timestamp": 1741105261},
        ],
    }
    if image_ref:
        data["image_ref"] = {
            "registry": registry,
            "repository": repository,
            "tag": tag,
            "digest": digest,
            "labels": {},
        }
    return data
