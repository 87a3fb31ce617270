"""Raw Redis rows -> ``ProcessRecord``, for any Sidekiq from 5.2 to 8.1 (pure, tolerant).

Decoding is per process, never per fleet: during a deploy old and new Sidekiq versions
beat side by side. A row that cannot be decoded becomes a record with ``problem`` set,
so the rest of the fleet is unaffected.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from quiesce.deploy import DeployRecord
from quiesce.fleet import FleetSnapshot, ProcessRecord, ServerInfo, SidekiqVersion, split_identity
from quiesce.keys import HEARTBEAT_TTL_S
from quiesce.rows import RawProcess, RawSnapshot

OLDEST_SUPPORTED = (5, 2)
FIRST_UNSUPPORTED = (9, 0)
N = TypeVar("N", int, float)
_VERSION_RE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


def decode_snapshot(raw: RawSnapshot, *, allow_newer: bool = False) -> FleetSnapshot:
    return FleetSnapshot(
        processes=tuple(decode_process(row, raw.time, allow_newer=allow_newer) for row in raw.rows),
        taken_at=raw.time,
        servers=(ServerInfo(raw.redis, raw.connected_clients, raw.maxclients),),
        latest_deploy=DeployRecord.parse(raw.latest_deploy),
    )


class _Unreadable(Exception):
    """Internal: carries the one-line reason a row is unreadable."""


def parse_version(text: str) -> tuple[int, int, int] | None:
    match = _VERSION_RE.match(text.strip())
    if not match:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def beat_interval_for(numbers: tuple[int, int, int]) -> float:
    """``BEAT_PAUSE``: 5 s up to 6.5.x, 10 s from 7.0.0."""
    return 10.0 if numbers >= (7, 0, 0) else 5.0


def read_version(
    info: Mapping[str, Any], fields: Mapping[str, str | None], *, allow_newer: bool = False
) -> SidekiqVersion:
    """``info.version`` (7.0.2+), else inferred from which fields the process writes.

    ``allow_newer`` accepts versions after 8.x as if they were 8.x (TSTP, 10 s beat), for
    the day a fleet upgrades before quiesce does; older than 5.2 is never accepted.
    """
    raw = info.get("version")
    if raw is not None:
        version = _known_version(str(raw), allow_newer)
        if isinstance(version, str):
            raise _Unreadable(version)
        return version
    # 7.0.0/7.0.1 write no version and look like 6.5 but beat every 10 s: stay conservative.
    if fields.get("rtt_us") is not None:
        return SidekiqVersion("6.2-7.0.1", inferred=True, beat_interval_s=10.0)
    if fields.get("rss") is not None:
        return SidekiqVersion("6.1.3-6.1.x", inferred=True, beat_interval_s=5.0)
    return SidekiqVersion("5.2-6.1.2", inferred=True, beat_interval_s=5.0)


@functools.lru_cache(maxsize=64)
def _known_version(text: str, allow_newer: bool) -> SidekiqVersion | str:
    """A fleet runs a handful of versions: parse each once. A ``str`` result is the problem."""
    numbers = parse_version(text)
    if numbers is None:
        return f"unparseable Sidekiq version {text!r}"
    newer = numbers[:2] >= FIRST_UNSUPPORTED
    if numbers[:2] < OLDEST_SUPPORTED or (newer and not allow_newer):
        hint = " (--allow-newer-sidekiq treats it as 8.x)" if newer else ""
        return f"unsupported Sidekiq version {text}: quiesce knows 5.2 to 8.x{hint}"
    return SidekiqVersion(text, inferred=False, beat_interval_s=beat_interval_for(numbers))


def _field(fields: Mapping[str, str | None], name: str, kind: Callable[[str], N]) -> N | None:
    value = fields.get(name)
    if value is None or value == "":
        return None
    try:
        return kind(value)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise _Unreadable(f"field {name!r} is not {what}: {value[:40]!r}") from None


def _str_list(info: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = info.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Unreadable(f"info.{key} is not a list of strings")
    return tuple(dict.fromkeys(value))


def _concurrency(info: Mapping[str, Any], fields: Mapping[str, str | None]) -> int | None:
    # 8.1.2 moved it from info into the hash; the hash field wins when present.
    from_hash = _field(fields, "concurrency", int)
    if from_hash is not None:
        return from_hash
    value = info.get("concurrency")
    if isinstance(value, int):
        return value
    capsules = info.get("capsules")
    if isinstance(capsules, dict):
        total = [c.get("concurrency") for c in capsules.values() if isinstance(c, dict)]
        if total and all(isinstance(c, int) for c in total):
            return sum(c for c in total if isinstance(c, int))
    return None


def _decode_info(raw_info: str | None) -> dict[str, Any]:
    if raw_info is None:
        raise _Unreadable("hash has no 'info' field")
    try:
        info = json.loads(raw_info)
    except json.JSONDecodeError as exc:
        raise _Unreadable(f"info is not valid JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(info, dict):
        raise _Unreadable("info JSON is not an object")
    return info


def beat_age(pttl_ms: int | None, beat: float | None, redis_now: float) -> float | None:
    """Seconds since the last beat, on the Redis clock where possible (TTL counts down from 60)."""
    if pttl_ms is not None and pttl_ms >= 0:
        return max(0.0, HEARTBEAT_TTL_S - pttl_ms / 1000.0)
    if beat is not None:
        # A hash without TTL (restored dump, manual write) never expires: fall back to `beat`.
        return max(0.0, redis_now - beat)
    return None


def decode_process(
    raw: RawProcess, redis_now: float, *, allow_newer: bool = False
) -> ProcessRecord:
    hostname, pid = split_identity(raw.identity)
    alive = raw.pttl_ms != -2 and any(v is not None for v in raw.fields.values())
    problem = raw.error
    if alive and problem is None:
        try:
            return _decode_alive(raw, redis_now, allow_newer)
        except _Unreadable as exc:
            problem = str(exc)
    beat = _safe_float(raw.fields.get("beat"))
    return ProcessRecord(
        identity=raw.identity,
        hostname=hostname,
        pid=pid,
        alive=alive or raw.error is not None,
        redis=raw.redis,
        beat=beat,
        beat_age_s=beat_age(raw.pttl_ms, beat, redis_now) if alive else None,
        ttl_ms=_ttl(raw.pttl_ms),
        pending_signals=tuple(reversed(raw.signals)),
        problem=problem,
    )


def _ttl(pttl_ms: int | None) -> int | None:
    return pttl_ms if pttl_ms is not None and pttl_ms >= 0 else None


def _safe_float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _decode_alive(raw: RawProcess, redis_now: float, allow_newer: bool) -> ProcessRecord:
    fields = raw.fields
    info = _decode_info(fields.get("info"))
    hostname, pid = split_identity(raw.identity)
    hostname = info.get("hostname", hostname)
    pid = info.get("pid", pid)
    if not isinstance(hostname, str) or not (pid is None or isinstance(pid, int)):
        raise _Unreadable("info.hostname or info.pid has the wrong type")
    started_at = info.get("started_at")
    if started_at is not None and not isinstance(started_at, int | float):
        raise _Unreadable("info.started_at is not a number")
    capsules = info.get("capsules")
    beat = _field(fields, "beat", float)
    quiet = fields.get("quiet")
    if quiet not in (None, "true", "false"):
        raise _Unreadable(f"field 'quiet' is {quiet!r}, expected 'true' or 'false'")
    return ProcessRecord(
        identity=raw.identity,
        hostname=hostname,
        pid=pid,
        alive=True,
        redis=raw.redis,
        ttl_ms=_ttl(raw.pttl_ms),
        pending_signals=tuple(reversed(raw.signals)),
        tag=str(info.get("tag") or ""),
        labels=_str_list(info, "labels"),
        queues=_str_list(info, "queues"),
        capsules=tuple(capsules) if isinstance(capsules, dict) else (),
        version=read_version(info, fields, allow_newer=allow_newer),
        embedded=info.get("embedded") is True,
        concurrency=_concurrency(info, fields),
        busy=_field(fields, "busy", int),
        beat=beat,
        beat_age_s=beat_age(raw.pttl_ms, beat, redis_now),
        quiet=quiet == "true",
        rss_kib=_field(fields, "rss", int),
        rtt_us=_field(fields, "rtt_us", int),
        started_at=float(started_at) if started_at is not None else None,
    )
