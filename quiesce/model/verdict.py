"""Deciding, poll by poll, whether a pushed signal took effect (pure; ``now`` passed in).

Sidekiq pops one signal per heartbeat (``RPOP`` inside the beat's MULTI, which also
refreshes ``EXPIRE <identity> 60``), and reports ``quiet = "true"`` one beat later.
So, on the Redis clock:

* *delivered*: the signal list is empty and the last beat (``now - (60 s - PTTL)``)
  came after the push, within the list's 60 s life;
* *quiet*: the hash says ``quiet = "true"``;
* *vanished*: the identity left ``processes`` while its hash lingers: that is what
  Sidekiq's clean shutdown does (``SREM``; the hash expires on its own);
* *absent*: neither a member nor a hash. A clean exit never looks like that within a
  wait; a Redis that restarted empty, lost writes in a failover, or was flushed does: the
  process re-registers on its next beat, with its signal list gone. So it is waited for,
  never counted as gone, and when it comes back with an empty list it is pushed again,
  unless it was already gone when the push went in (then the push is what it popped);
* *expired*: the list is empty 60 s after the push without a delivery: it expired
  unconsumed, so it is pushed again while the deadline allows.

An error reply for a target (a key of the wrong type) is remembered and waited past;
it never reads as "exited". An error on the work hash alone hides only the jobs: the
target is judged on the rest of its row, and ``busy`` alone decides whether it drained.

A target whose heartbeat is overdue is never confirmed, drained or "still busy", whatever
its hash says: a process killed -9 leaves its last hash (quiet, jobs listed) for up to
60 s. It is waited for (a hung process may resume) and ends ``stalled``.

``--until drained`` waits past *quiet*: the beat that reports ``quiet = "true"`` comes
after the quiet took effect, so from then on no job starts; the process is *drained*
when that hash's ``busy`` is 0 and its work hash is empty (``drain.is_idle``). At the
deadline, a process that took the signal but still runs jobs is ``still_busy``.
"""

from __future__ import annotations

import dataclasses
import enum

from quiesce.model.decode import parse_float
from quiesce.model.drain import busy_count, is_idle, read_work
from quiesce.model.fleet import ProcessRecord, beat_overdue
from quiesce.model.quiet import Outcome
from quiesce.sidekiq.keys import HEARTBEAT_TTL_S, SIGNAL_TTL_S
from quiesce.sidekiq.rows import PollRow
from quiesce.sidekiq.work import NO_WORK, WorkRead

SIGNAL_TTL_MS = SIGNAL_TTL_S * 1000
BEAT_CLOCK_SLACK_MS = 250
"""TIME is read first in a poll pipeline and each PTTL a few ms later: allow for that."""


class Until(enum.StrEnum):
    DELIVERED = "delivered"
    QUIET = "quiet"
    DRAINED = "drained"


class Verdict(enum.Enum):
    WAITING = "waiting"
    CONFIRMED = "confirmed"
    VANISHED = "vanished"
    PUSH = "push"
    """Push (again): never pushed, expired unconsumed, or came back after Redis lost it."""
    DRAINED = "drained"
    """Quiet, and both ``busy`` and the work hash say no job is running."""


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """What is known about one signalled process during the wait (replaced, never mutated)."""

    record: ProcessRecord
    pushed_at_ms: int | None = None
    """Redis time of the last push; None while a push is still owed."""
    pushes: int = 0
    outcome: Outcome = Outcome.PENDING
    confirmed_at_ms: int | None = None
    last_beat_ms: int | None = None
    """Redis-clock time of the newest beat seen, when the hash has a TTL."""
    beat_seen: float | None = None
    """The ``beat`` field at the last push, to notice beats of hashes with no TTL."""
    beat_field: float | None = None
    """The ``beat`` field as last read."""
    polled: bool = False
    beat_age_s: float | None = None
    """At the last poll: seconds since the process's last beat (None: unknown)."""
    absent: bool = False
    """Seen with neither membership nor hash at the last poll."""
    absent_at_push: bool = False
    """Already gone (or known lost) when the last push went in: the push reached the
    Redis it will re-register in."""
    lost_after_push: bool = False
    """Went missing with its data after the last push: whatever that push left may be gone."""
    problem: str | None = None
    """The last thing that went wrong for this target (a refused push, an error reply)."""
    delivered: bool = False
    """Draining: a beat popped the signal, or the process reported quiet."""
    busy: int | None = None
    """Draining: the ``busy`` field as last read."""
    work: WorkRead = NO_WORK
    """Draining: the jobs its work hash listed at the last poll."""
    work_note: str | None = None
    """Draining: why its work hash could not be read (not a failure: ``busy`` decides)."""
    hash_expired: bool = False
    """Still a member at the last poll, but its hash had expired: no beat for 60 s."""

    @property
    def overdue(self) -> bool:
        """Its own heartbeat is overdue at the last poll (hung, or killed)."""
        return self.hash_expired or (
            self.beat_age_s is not None
            and beat_overdue(self.beat_age_s, self.record.beat_interval_s)
        )

    @property
    def running(self) -> bool:
        """Draining: jobs were running at the last poll (by either account)."""
        return bool(self.busy) or self.work.entries > 0

    @property
    def identity(self) -> str:
        return self.record.identity

    @property
    def done(self) -> bool:
        return self.outcome is not Outcome.PENDING

    def popped_by_beat(self, row: PollRow) -> bool:
        """A beat after the push, while the signal list was still alive, emptied it."""
        assert self.pushed_at_ms is not None
        if self.last_beat_ms is not None and self.last_beat_ms >= self.pushed_at_ms + SIGNAL_TTL_MS:
            return False  # that beat may have found the list already expired
        if self.last_beat_ms is not None:
            return self.last_beat_ms >= self.pushed_at_ms - BEAT_CLOCK_SLACK_MS
        beat = parse_float(row.beat)
        return beat is not None and beat != self.beat_seen


def assess(target: Target, row: PollRow, now_ms: int, until: Until) -> tuple[Target, Verdict]:
    """The target as this poll shows it, and what to do about it."""
    seen = dataclasses.replace(target, polled=True)
    if row.error is not None:
        return dataclasses.replace(seen, problem=f"Redis: {row.error}"), Verdict.WAITING
    if not row.in_set:
        if row.hash_alive:
            return seen, Verdict.VANISHED
        lost = seen.lost_after_push or not seen.absent_at_push
        gone = dataclasses.replace(seen, absent=True, lost_after_push=lost, beat_age_s=None)
        return gone, Verdict.WAITING
    if not row.hash_alive:
        # A member whose hash expired (hung past 60 s): keep a live signal waiting for it.
        expired = dataclasses.replace(seen, hash_expired=True, beat_age_s=None)
        return expired, _expired(expired, row, now_ms)
    # Back after losing its data since the push, with nothing queued: the push may be gone.
    unsure = seen.lost_after_push and row.signals_len == 0
    seen = _beat(dataclasses.replace(seen, absent=False, hash_expired=False), row, now_ms)
    if seen.overdue:
        # Its hash is its last word, not its state: never confirmed on it. A signal that
        # expired meanwhile is pushed again, so a process that resumes still finds one.
        if seen.record.quiet and seen.pushed_at_ms is None:
            return seen, Verdict.WAITING
        return seen, _expired(seen, row, now_ms)
    if until is Until.DRAINED:
        return _drain(seen, row, now_ms, unsure)
    if row.quiet == "true":
        return dataclasses.replace(seen, confirmed_at_ms=now_ms), Verdict.CONFIRMED
    if seen.pushed_at_ms is None or unsure:
        return seen, Verdict.PUSH
    if until is Until.DELIVERED and row.signals_len == 0 and seen.popped_by_beat(row):
        return dataclasses.replace(seen, confirmed_at_ms=now_ms), Verdict.CONFIRMED
    return seen, _expired(seen, row, now_ms)


def _drain(target: Target, row: PollRow, now_ms: int, unsure: bool) -> tuple[Target, Verdict]:
    """``--until drained``: quiet first (no job can start after that beat), then idle."""
    busy = busy_count(row.busy)
    note = None
    if row.work_error is not None:
        note = f"its work hash cannot be read (Redis: {row.work_error}); busy alone decides"
    seen = dataclasses.replace(
        target,
        busy=busy,
        work=read_work(target.record, row.work, now_ms / 1000),
        work_note=note or target.work_note,
    )
    if row.quiet == "true":
        seen = dataclasses.replace(seen, delivered=True)
        if seen.confirmed_at_ms is None:
            seen = dataclasses.replace(seen, confirmed_at_ms=now_ms)
        idle = busy == 0 if row.work_error is not None else is_idle(busy, seen.work)
        if idle:
            return seen, Verdict.DRAINED
        return seen, Verdict.WAITING
    if seen.pushed_at_ms is None or unsure:
        return seen, Verdict.PUSH
    if seen.delivered:
        return seen, Verdict.WAITING  # TSTP taken: quiet shows on the next beat
    if row.signals_len == 0 and seen.popped_by_beat(row):
        return dataclasses.replace(seen, delivered=True), Verdict.WAITING
    return seen, _expired(seen, row, now_ms)


def _expired(target: Target, row: PollRow, now_ms: int) -> Verdict:
    if target.pushed_at_ms is None:
        return Verdict.PUSH
    if row.signals_len == 0 and now_ms - target.pushed_at_ms >= SIGNAL_TTL_MS:
        return Verdict.PUSH
    return Verdict.WAITING


def _beat(target: Target, row: PollRow, now_ms: int) -> Target:
    if row.pttl_ms is not None and row.pttl_ms >= 0:
        age_ms = HEARTBEAT_TTL_S * 1000 - row.pttl_ms
        return dataclasses.replace(
            target,
            last_beat_ms=now_ms - age_ms,
            beat_age_s=age_ms / 1000,
            beat_field=parse_float(row.beat),
        )
    beat = parse_float(row.beat)
    age = None if beat is None else max(0.0, now_ms / 1000 - beat)
    return dataclasses.replace(target, beat_age_s=age, beat_field=beat)


def settle(target: Target, verdict: Verdict) -> Target:
    if verdict is Verdict.CONFIRMED:
        return dataclasses.replace(target, outcome=Outcome.CONFIRMED, problem=None)
    if verdict is Verdict.VANISHED:
        return dataclasses.replace(target, outcome=Outcome.VANISHED, problem=None)
    if verdict is Verdict.DRAINED:
        return dataclasses.replace(target, outcome=Outcome.DRAINED, problem=None)
    return target


def pushed(target: Target, pushed_at_ms: int) -> Target:
    """A push went in: every delivery is measured from it."""
    return dataclasses.replace(
        target,
        pushed_at_ms=pushed_at_ms,
        pushes=target.pushes + 1,
        last_beat_ms=None,
        beat_seen=target.beat_field if target.polled else target.record.beat,
        absent_at_push=target.absent,
        lost_after_push=False,
        problem=None,
    )


def push_refused(target: Target, reason: str) -> Target:
    """Redis refused this target's push (its signal list is not a list, say): final."""
    return dataclasses.replace(target, outcome=Outcome.SIGNAL_FAILED, problem=reason)


def server_lost_data(target: Target) -> Target:
    """The server restarted (or lost writes) since the push: the signal may be gone."""
    if target.done:
        return target
    # Every process of that server is gone or re-registering: the next push reaches the
    # Redis they re-register in, so what they pop after it is that push.
    return dataclasses.replace(target, pushed_at_ms=None, last_beat_ms=None, absent=True)


def finalize(target: Target) -> Target:
    """At the deadline, a target still pending gets the outcome that says why."""
    if target.done:
        return target
    if target.polled and target.overdue and not target.absent:
        outcome = Outcome.STALLED
    elif target.delivered and target.running:
        outcome = Outcome.STILL_BUSY
    elif target.pushed_at_ms is None and target.pushes == 0 and not target.record.quiet:
        outcome = Outcome.NOT_SIGNALLED
    elif target.absent:
        outcome = Outcome.LOST
    elif not target.polled:
        outcome = Outcome.NOT_CONFIRMED
    else:
        outcome = Outcome.NOT_CONFIRMED
    return dataclasses.replace(target, outcome=outcome)
