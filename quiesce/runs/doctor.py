"""``quiesce doctor``'s reads: fly.toml within bounds, then judged
(``quiesce.model.doctor``); the live fleet in one snapshot with its running jobs. The
CLI passes its own argument parser in (``ArgvCheck``), so the release command is checked
by the code that will run it.

A fly.toml is a few kilobytes: reading at most ``MAX_FLY_TOML_BYTES`` keeps
``doctor /dev/zero`` (or a multi-gigabyte file given by mistake) a one-line error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from quiesce.errors import ConfigError
from quiesce.model import doctor as dr
from quiesce.runs.read import FleetReader, read_fleet

MAX_FLY_TOML_BYTES = 1_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class ConfigCheck:
    config: dict[str, Any]
    deploy: dr.Deploy
    findings: list[dr.Finding]


def read_fly_toml(path: str) -> dict[str, Any]:
    """Parsed fly.toml; every way it can be unreadable is one ``ConfigError`` line."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FLY_TOML_BYTES + 1)
    except IsADirectoryError:
        raise ConfigError(f"cannot read {path}: it is a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FLY_TOML_BYTES:
        raise ConfigError(
            f"{path} is larger than {MAX_FLY_TOML_BYTES // 1_000_000} MB: not a fly.toml"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.start}): TOML files are UTF-8"
        ) from None
    return dr.parse_fly_toml(text, name=path)


def check_fly_toml(
    path: str,
    *,
    sidekiq_timeout_s: float | None = None,
    groups: Sequence[str] = (),
    parse: dr.ArgvCheck | None = None,
) -> ConfigCheck:
    config = read_fly_toml(path)
    deploy = dr.read_deploy(config, sidekiq_timeout_s=sidekiq_timeout_s, groups=groups)
    return ConfigCheck(config, deploy, dr.check_config(deploy, config, parse=parse))


def check_live_fleet(
    stores: Sequence[FleetReader], deploy: dr.Deploy, *, releases: Sequence[str] = ()
) -> list[dr.Finding]:
    """The live half: one fleet snapshot with the work hashes (the reader every command
    shares: still one pipeline), judged against fly.toml. Reads only."""
    snapshot = read_fleet(stores, allow_newer=True, jobs=True)
    return dr.check_fleet(deploy, snapshot, releases=releases)
