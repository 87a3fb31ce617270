"""Raw Redis rows -> ``ProcessRecord``, for every Sidekiq in ``versions.BANDS`` (pure, tolerant).

Decoding is per process, never per fleet: during a deploy old and new Sidekiq versions
beat side by side. A row that cannot be decoded becomes a record with ``problem`` set,
so the rest of the fleet is unaffected.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

from quiesce.model.fleet import ProcessRecord, ServerInfo, SidekiqVersion, split_identity
from quiesce.model.ledger import select_history
from quiesce.model.record_fields import has_surrogates
from quiesce.model.snapshot import FleetSnapshot, mark_quieting
from quiesce.sidekiq.keys import HEARTBEAT_TTL_S
from quiesce.sidekiq.rows import RawProcess, RawSnapshot
from quiesce.sidekiq.versions import (
    BANDS,
    FIRST_UNSUPPORTED,
    OLDEST_SUPPORTED,
    OPTIONAL_HASH_FIELDS,
    band_for,
    bands_without_version,
    format_version,
    parse_version,
    range_text,
)
from quiesce.sidekiq.work import band_of, decode_work, work_suffixes

__all__ = ["decode_process", "decode_snapshot", "parse_float", "parse_version", "read_version"]


def decode_snapshot(raw: RawSnapshot, *, allow_newer: bool = False) -> FleetSnapshot:
    """Every row decoded on its own; the scope's history (``record.select_history``: its
    ledger, else the pre-ledger latest record) read tolerantly, its newest record used to
    tell quieting processes (``fleet.is_quieting``) from running ones."""
    history = select_history(raw.ledger, raw.scope, raw.time, legacy=raw.latest_deploy)
    deploy = history.records[0] if history.records else None
    records = [
        _with_work(decode_process(row, raw.time, allow_newer=allow_newer), row, raw.time)
        for row in raw.rows
    ]
    problem = "; ".join(dict.fromkeys(history.problems))
    return FleetSnapshot(
        processes=mark_quieting(records, deploy, raw.time),
        taken_at=raw.time,
        servers=(ServerInfo(raw.redis, raw.connected_clients, raw.maxclients, raw.run_id),),
        latest_deploy=deploy,
        deploy_problem=f"{problem} ({raw.redis})" if problem else None,
        history=history.records,
        scope=raw.scope,
        legacy_history=history.legacy,
        ledger_drop=history.drop,
        keyspace=tuple((raw.redis, db, n) for db, n in sorted((raw.keyspace or {}).items())),
        other_scope=history.other_scope,
    )


def _with_work(record: ProcessRecord, raw: RawProcess, redis_now: float) -> ProcessRecord:
    """The record with its running jobs, from the work hash its version writes (both
    names merged when the version is only inferred)."""
    if raw.work is None or not record.alive:
        return record
    version = record.version
    text, inferred = (version.text, version.inferred) if version else (None, False)
    entries = {
        tid: value
        for suffix in work_suffixes(text, inferred)
        for tid, value in raw.work.get(suffix, {}).items()
    }
    band = band_of(text, inferred)
    work = decode_work(
        record.identity,
        record.machine,
        entries,
        now=redis_now,
        units=band.job_time_units if band else None,
        redis=record.redis,
    )
    return dataclasses.replace(record, work=work)


class _Unreadable(Exception):
    """Internal: carries the one-line reason a row is unreadable."""


def parse_float(text: str | None) -> float | None:
    """A finite number from a Redis string, or None (missing, garbage, NaN, infinity)."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def printable(text: str) -> str:
    """``text`` safe to show: non-UTF-8 bytes as ``\\xff``, control characters escaped."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif "\udc80" <= ch <= "\udcff":  # a byte surrogateescape could not decode
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def read_version(
    info: Mapping[str, Any], fields: Mapping[str, str | None], *, allow_newer: bool = False
) -> SidekiqVersion:
    """``info.version`` (7.0.2+), else inferred from which fields the process writes.

    ``allow_newer`` reads versions from ``FIRST_UNSUPPORTED`` on as the newest band, for
    the day a fleet upgrades before quiesce does; older than 5.2 is never accepted.
    An inferred version gets the longest beat interval of its candidate bands: 7.0.0 and
    7.0.1 write no version and look like 6.5 but beat every 10 s.
    """
    raw = info.get("version")
    if raw is not None:
        version = _known_version(str(raw)[:40], allow_newer)
        if isinstance(version, str):
            raise _Unreadable(version)
        return version
    present = frozenset(f for f in OPTIONAL_HASH_FIELDS if fields.get(f) not in (None, ""))
    bands = bands_without_version(present)
    interval = max(b.beat_interval_s for b in bands)
    shortest = min(b.beat_interval_s for b in bands)
    return SidekiqVersion(
        range_text(bands),
        inferred=True,
        beat_interval_s=interval,
        beat_interval_min_s=shortest if shortest != interval else None,
    )


@functools.lru_cache(maxsize=64)
def _known_version(text: str, allow_newer: bool) -> SidekiqVersion | str:
    """A fleet runs a handful of versions: parse each once. A ``str`` result is the problem."""
    numbers = parse_version(text)
    if numbers is None:
        return f"unparseable Sidekiq version {printable(text)!r}"
    band = band_for(numbers, allow_newer=allow_newer)
    if band is None:
        newest = f"{BANDS[-1].first[0]}.x"
        newer = numbers >= FIRST_UNSUPPORTED
        hint = f" (--allow-newer-sidekiq treats it as {newest})" if newer else ""
        return (
            f"unsupported Sidekiq version {printable(text)}: quiesce knows "
            f"{format_version(OLDEST_SUPPORTED)} to {newest}{hint}"
        )
    return SidekiqVersion(text, inferred=False, beat_interval_s=band.beat_interval_s)


def _int_field(fields: Mapping[str, str | None], name: str) -> int | None:
    value = fields.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:  # also digit strings over Python's 4,300-digit limit
        raise _Unreadable(f"field {name!r} is not an integer: {value[:40]!r}") from None


_INFORMATIONAL_FIELDS = ("rss", "rtt_us")
"""Fields no decision reads: an odd value is a note on the record, not a reason to stop
trusting a process that beats."""


def _informational(fields: Mapping[str, str | None], notes: list[str]) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for name in _INFORMATIONAL_FIELDS:
        try:
            out[name] = _int_field(fields, name)
        except _Unreadable as exc:
            notes.append(printable(str(exc)))
            out[name] = None
    return out


def _float_field(fields: Mapping[str, str | None], name: str) -> float | None:
    value = fields.get(name)
    if value is None or value == "":
        return None
    number = parse_float(value)
    if number is None:
        raise _Unreadable(f"field {name!r} is not a number: {value[:40]!r}")
    return number


def _str_list(info: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = info.get(key) or []
    # JSON gives exact types: one set of them checks the whole list in C.
    if type(value) is not list or not set(map(type, value)) <= _STR_ONLY:
        raise _Unreadable(f"info.{key} is not a list of strings")
    return tuple(dict.fromkeys(value))


_STR_ONLY = frozenset({str})


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _concurrency(info: Mapping[str, Any], fields: Mapping[str, str | None]) -> int | None:
    # 8.1.2 moved it from info into the hash; the hash field wins when present.
    from_hash = _int_field(fields, "concurrency")
    if from_hash is not None:
        return from_hash
    value = info.get("concurrency")
    if _is_int(value):
        return value
    capsules = info.get("capsules")
    if isinstance(capsules, dict):
        total = [c.get("concurrency") for c in capsules.values() if isinstance(c, dict)]
        counts = [c for c in total if _is_int(c)]
        if counts and len(counts) == len(total):
            return sum(counts)
    return None


def _decode_info(raw_info: str | None) -> dict[str, Any]:
    if raw_info is None:
        raise _Unreadable("hash has no 'info' field")
    if has_surrogates(raw_info):
        raise _Unreadable("info is not valid UTF-8")
    try:
        info = json.loads(raw_info)
    except RecursionError:
        raise _Unreadable("info JSON is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise _Unreadable(f"info is not valid JSON ({exc.msg} at char {exc.pos})") from None
    except ValueError as exc:  # e.g. an integer over Python's 4,300-digit limit
        raise _Unreadable(f"info is not valid JSON ({str(exc)[:60]})") from None
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


def _identity_problem(identity: str) -> str | None:
    # Control characters are shown escaped (quiesce.text) and signalled as usual: the key
    # is exact either way. Bytes that are not UTF-8 are no identity Sidekiq writes.
    if has_surrogates(identity):
        return "identity is not valid UTF-8"
    return None


def _signals(signals: Sequence[str]) -> tuple[str, ...]:
    """Oldest first, as stored: text output escapes them (quiesce.text), JSON keeps them."""
    return tuple(reversed(signals))


def decode_process(
    raw: RawProcess, redis_now: float, *, allow_newer: bool = False
) -> ProcessRecord:
    """Never raises: whatever the row holds, the result is a record, with ``problem`` set
    (state ``unreadable``) when the row cannot be trusted."""
    fields = raw.fields
    alive = raw.pttl_ms != -2 and (
        fields.get("info") is not None or any(v is not None for v in fields.values())
    )
    problem = raw.error
    if alive and problem is None:
        try:
            record = _decode_alive(raw, redis_now, allow_newer)
        except _Unreadable as exc:
            problem = str(exc)
        except (RecursionError, ValueError, TypeError) as exc:  # a shape nobody foresaw
            problem = f"heartbeat cannot be decoded ({type(exc).__name__})"
        else:
            bad_identity = _identity_problem(raw.identity)
            if bad_identity is None:
                return record
            return dataclasses.replace(record, problem=bad_identity)
    hostname, pid = split_identity(raw.identity)
    beat = parse_float(raw.fields.get("beat"))
    return ProcessRecord(
        identity=raw.identity,
        hostname=hostname,
        pid=pid,
        alive=alive or raw.error is not None,
        redis=raw.redis,
        beat=beat,
        beat_age_s=beat_age(raw.pttl_ms, beat, redis_now) if alive else None,
        pending_signals=_signals(raw.signals),
        problem=problem if problem is not None else _identity_problem(raw.identity),
    )


def _decode_alive(raw: RawProcess, redis_now: float, allow_newer: bool) -> ProcessRecord:
    fields = raw.fields
    if raw.signals and has_surrogates("".join(raw.signals)):
        raise _Unreadable("signal list holds an entry that is not valid UTF-8")
    info = _decode_info(fields.get("info"))
    hostname, pid = split_identity(raw.identity)
    hostname = info.get("hostname", hostname)
    pid = info.get("pid", pid)
    if not isinstance(hostname, str) or not (pid is None or _is_int(pid)):
        raise _Unreadable("info.hostname or info.pid has the wrong type")
    started_at = info.get("started_at")
    if started_at is not None and (
        not isinstance(started_at, int | float)
        or isinstance(started_at, bool)
        or not math.isfinite(started_at)
    ):
        raise _Unreadable("info.started_at is not a number")
    tag = info.get("tag") or ""
    if not isinstance(tag, str):
        raise _Unreadable("info.tag is not a string")
    labels, queues = _str_list(info, "labels"), _str_list(info, "queues")
    if has_surrogates("".join((hostname, tag, *labels, *queues))):  # \udcXX escapes
        raise _Unreadable("info holds text that is not valid UTF-8")
    beat = _float_field(fields, "beat")
    quiet = fields.get("quiet")
    if quiet not in (None, "true", "false"):
        raise _Unreadable(f"field 'quiet' is {quiet[:40]!r}, expected 'true' or 'false'")
    notes: list[str] = []
    extra = _informational(fields, notes)
    return ProcessRecord(
        identity=raw.identity,
        hostname=hostname,
        pid=pid,
        alive=True,
        redis=raw.redis,
        pending_signals=_signals(raw.signals),
        tag=tag,
        labels=labels,
        queues=queues,
        version=read_version(info, fields, allow_newer=allow_newer),
        embedded=info.get("embedded") is True,
        concurrency=_concurrency(info, fields),
        busy=_int_field(fields, "busy"),
        beat=beat,
        beat_age_s=beat_age(raw.pttl_ms, beat, redis_now),
        quiet=quiet == "true",
        rss_kib=extra["rss"],
        rtt_us=extra["rtt_us"],
        started_at=float(started_at) if started_at is not None else None,
        notes=tuple(notes),
    )
