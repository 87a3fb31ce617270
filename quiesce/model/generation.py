"""The one new-process rule (pure): ``quiesce rejoin``, ``status`` and the exporter's
``generation`` label all ask it, so they cannot disagree.

A *new* process is not in the deploy record and started after the quiet: its
``started_at`` (its own clock) is moved onto the Redis clock with the offset measured
from its last beat (``beat`` on its clock against ``taken_at - beat_age_s`` on Redis's)
and compared with the record's start with no slack: a process started 1.7 s before the
quiet is old (it was not quieted and may run the old code); the offset's own error only
makes a start look later. When the process carries a release label (``release:<x>`` or
an image reference), it must also be the deployed one. A new process counts only once it
has kept beating for a heartbeat interval (``kept_beating``): Sidekiq beats once at boot
(protocol doc 1.2), so a process that beats once and dies never counts.
"""

from __future__ import annotations

from collections.abc import Iterable

from quiesce.model.fleet import ProcessRecord, ProcessState
from quiesce.model.record import DeployRecord

KEPT_BEATING_SLACK_S = 1.0
"""A second beat comes ``BEAT_PAUSE`` plus the beat's own work after the first (protocol
doc 1.2), so ``beat - started_at`` reaches the interval less this only by rounding; a
process that beat once is at about 0."""


def clock_offset(proc: ProcessRecord, taken_at: float) -> float | None:
    """The process's clock minus Redis's, from its last beat; None when unmeasurable."""
    if proc.beat is None or proc.beat_age_s is None:
        return None
    return proc.beat - (taken_at - proc.beat_age_s)


def release_label(labels: Iterable[str]) -> str | None:
    """The release a process says it runs: a ``release:<x>`` label, else a label that is an
    image reference (``FLY_IMAGE_REF``, ``registry.fly.io/app:deployment-...``)."""
    labels = list(labels)
    for label in labels:
        if label.startswith("release:"):
            return label.removeprefix("release:")
    for label in labels:
        if "/" in label and ":" in label.rsplit("/", 1)[-1]:
            return label
    return None


def same_image(a: str, b: str) -> bool:
    """Equal, or the same image tag or digest (one side may omit the registry)."""
    if a == b:
        return True
    a_digest, b_digest = a.partition("@")[2], b.partition("@")[2]
    if a_digest and b_digest:
        return a_digest == b_digest
    a_tag = a.partition("@")[0].rsplit("/", 1)[-1]
    b_tag = b.partition("@")[0].rsplit("/", 1)[-1]
    return ":" in a_tag and ":" in b_tag and a_tag.rsplit(":", 1)[1] == b_tag.rsplit(":", 1)[1]


def start_on_redis_clock(proc: ProcessRecord, taken_at: float | None) -> float | None:
    """``started_at`` moved onto the Redis clock by the offset measured from the last beat
    (unmeasurable, or no ``taken_at``: taken as is)."""
    if proc.started_at is None:
        return None
    offset = None if taken_at is None else clock_offset(proc, taken_at)
    return proc.started_at - (offset or 0.0)


def process_generation(
    proc: ProcessRecord,
    record: DeployRecord | None,
    old: frozenset[str] | None,
    taken_at: float | None,
    release: str | None = None,
) -> str:
    """``old`` (in the record, started before its quiet, or labelled with another
    release), ``new`` (the rule in the module docstring) or ``unknown`` (no record, or no
    start time). ``old``: the record's identities, built once per snapshot."""
    if record is None:
        return "unknown"
    if old is None:
        old = frozenset(e.identity for e in record.fleet)
    if proc.identity in old:
        return "old"
    label = release_label(proc.labels)
    release = release or record.release
    if label is not None and release and not same_image(label, release):
        return "old"
    start = start_on_redis_clock(proc, taken_at)
    if start is None:
        return "unknown"
    # No slack: a process that started before the quiet was not quieted by it and may
    # run the old code; the offset's own error only makes a start look later.
    return "new" if start > record.started_at else "old"


def kept_beating(proc: ProcessRecord) -> bool:
    """It beat again a heartbeat interval after its first beat (which is its start)."""
    if proc.beat is None or proc.started_at is None or proc.is_stalled:
        return False
    return proc.beat - proc.started_at >= proc.beat_interval_s - KEPT_BEATING_SLACK_S


def is_new_process(
    proc: ProcessRecord,
    record: DeployRecord,
    old: frozenset[str],
    taken_at: float,
    release: str | None,
) -> bool:
    """A live, readable, running (not quiet) process of the new deploy, kept beating or
    not (``kept_beating`` says whether it counts yet)."""
    if not proc.alive or proc.state is not ProcessState.RUNNING:
        return False
    return process_generation(proc, record, old, taken_at, release) == "new"
