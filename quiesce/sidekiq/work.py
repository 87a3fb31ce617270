"""Jobs running on a Sidekiq process, from its work hash (pure, tolerant).

Sidekiq rewrites ``<identity>:workers`` (up to 6.4.1) or ``<identity>:work`` (6.4.2+) on
every beat (protocol doc 3): field = thread id, value = JSON ``{"queue", "payload",
"run_at"}``. ``payload`` is the job hash itself up to 6.0.1 and the job JSON as a string
(double-encoded) from 6.0.2; both are accepted whatever the version says, as Sidekiq's own
``Work#job`` does. ``run_at`` is integer epoch seconds in every version; the job's own
``created_at``/``enqueued_at`` are float seconds before 8.0 and integer milliseconds from
8.0 (``versions.JobTimeUnits``).

An entry that cannot be read is reported and skipped; it still counts as a running job
(``WorkRead.entries``): a drain never passes over a thread it could not decode.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

from quiesce.sidekiq.versions import (
    BANDS,
    JobTimeUnits,
    VersionBand,
    band_for,
    parse_version,
)

MS_EPOCH_THRESHOLD = 100_000_000_000
"""An epoch at or above this (year 5138 in seconds) is milliseconds."""

MAX_ENTRY_CHARS = 1_000_000
"""A work entry longer than this is not decoded (a job's args can be huge; this bounds it)."""


@dataclasses.dataclass(frozen=True, slots=True)
class RunningJob:
    """One job a Sidekiq thread was running at the process's last beat."""

    identity: str
    machine: str
    tid: str
    queue: str
    job_class: str
    """``wrapped`` for ActiveJob (the class the app wrote), else ``class``."""
    jid: str | None
    run_at: float | None
    """Epoch seconds on the process's clock, when the thread started the job."""
    runtime_s: float | None
    """Seconds since ``run_at`` on the Redis clock (None: no usable ``run_at``)."""
    enqueued_at: float | None = None
    """Epoch seconds (8.x milliseconds converted)."""
    args: Any = None
    """The job's arguments (may hold personal data: shown only on request)."""
    redis: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class WorkRead:
    """A process's work hash, decoded."""

    jobs: tuple[RunningJob, ...]
    """Readable entries, longest running first."""
    entries: int
    """Every entry, readable or not: what the drain counts."""
    problems: tuple[str, ...] = ()


NO_WORK = WorkRead((), 0)


def band_of(version_text: str | None, inferred: bool) -> VersionBand | None:
    """The band a decoded version falls in; for an inferred range (``"6.2-7.0.1"``), its
    first band (every unversioned band shares the job time units)."""
    if version_text is None:
        return None
    numbers = parse_version(version_text.split("-", 1)[0] if inferred else version_text)
    return None if numbers is None else band_for(numbers, allow_newer=True)


def work_suffixes(version_text: str | None, inferred: bool) -> tuple[str, ...]:
    """Which work hash(es) a process may write: one when the version is known, both when
    an inferred range straddles 6.4.2 (6.4.1 and 6.4.2 write the same hash fields) or the
    version is unknown."""
    both = tuple(dict.fromkeys(b.work_key_suffix for b in BANDS))
    if version_text is None:
        return both
    if not inferred:
        band = band_of(version_text, inferred=False)
        return (band.work_key_suffix,) if band is not None else both
    low_text, _, high_text = version_text.partition("-")
    low = parse_version(low_text)
    high = parse_version(high_text.replace("x", "9999")) if high_text else low
    if low is None or high is None:
        return both
    first = band_for(low, allow_newer=True)
    if first is None:
        return both
    span = [b for b in BANDS if b.first >= first.first and b.first <= high]
    return tuple(dict.fromkeys(b.work_key_suffix for b in span)) or both


def job_time(value: object, units: JobTimeUnits | None = None) -> tuple[float, JobTimeUnits] | None:
    """The one reading of a Sidekiq job timestamp (``enqueued_at``, ``created_at``,
    ``run_at``): epoch seconds, and the unit it was written in.

    Milliseconds when ``units`` says so (8.x) or when the number is at or above
    ``MS_EPOCH_THRESHOLD`` (1e11 s is the year 5138; 1e11 ms is 1973): the rule Sidekiq 8's
    readers and the protocol doc (4.3) use. Numeric strings (Oj-written payloads) follow
    the same rules. Zero, negatives, non-finite numbers and anything else: None.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, int | float):
        return None
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        return None
    if units is JobTimeUnits.INT_MILLISECONDS or number >= MS_EPOCH_THRESHOLD:
        return number / 1000.0, JobTimeUnits.INT_MILLISECONDS
    return number, JobTimeUnits.FLOAT_SECONDS


def epoch_seconds(value: object, units: JobTimeUnits | None) -> float | None:
    """``job_time`` without the unit."""
    parsed = job_time(value, units)
    return None if parsed is None else parsed[0]


class _Bad(Exception):
    pass


def _payload(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    payload = entry.get("payload")
    if isinstance(payload, str):  # 6.0.2+: the job JSON, encoded a second time
        try:
            payload = json.loads(payload)
        except (ValueError, RecursionError):
            raise _Bad("payload is not valid JSON") from None
    if not isinstance(payload, dict):
        raise _Bad("payload is not a job object")
    return payload


def _entry(
    identity: str,
    machine: str,
    tid: str,
    text: str,
    *,
    now: float,
    units: JobTimeUnits | None,
    redis: str,
) -> RunningJob:
    if len(text) > MAX_ENTRY_CHARS:
        raise _Bad(f"entry is over {MAX_ENTRY_CHARS} characters")
    try:
        entry = json.loads(text)
    except (ValueError, RecursionError):
        raise _Bad("entry is not valid JSON") from None
    if not isinstance(entry, dict):
        raise _Bad("entry is not a JSON object")
    job = _payload(entry)
    job_class = job.get("wrapped") or job.get("class")
    if not isinstance(job_class, str) or not job_class:
        raise _Bad("job has no class")
    queue = entry.get("queue", job.get("queue"))
    if not isinstance(queue, str):
        raise _Bad("entry has no queue")
    jid = job.get("jid")
    run_at = epoch_seconds(entry.get("run_at"), None)  # integer seconds in every version
    return RunningJob(
        identity=identity,
        machine=machine,
        tid=tid,
        queue=queue,
        job_class=job_class,
        jid=jid if isinstance(jid, str) else None,
        run_at=run_at,
        runtime_s=None if run_at is None else max(0.0, now - run_at),
        enqueued_at=epoch_seconds(job.get("enqueued_at"), units),
        args=job.get("args"),
        redis=redis,
    )


def decode_work(
    identity: str,
    machine: str,
    entries: Mapping[str, str],
    *,
    now: float,
    units: JobTimeUnits | None,
    redis: str = "",
) -> WorkRead:
    """Every entry of a work hash; ``now`` is the Redis clock (epoch seconds)."""
    if not entries:
        return NO_WORK
    jobs: list[RunningJob] = []
    problems: list[str] = []
    for tid, text in entries.items():
        try:
            jobs.append(_entry(identity, machine, tid, text, now=now, units=units, redis=redis))
        except _Bad as exc:
            problems.append(f"{identity} thread {tid}: {exc}; skipped")
    return WorkRead(tuple(sorted(jobs, key=longest_first)), len(entries), tuple(problems))


def longest_first(job: RunningJob) -> tuple[float, str, str]:
    """Sort key: longest running first; unknown runtimes last; then stable by identity."""
    runtime = job.runtime_s if job.runtime_s is not None else -1.0
    return (-runtime, job.identity, job.tid)
