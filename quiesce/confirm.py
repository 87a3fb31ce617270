"""Deciding, poll by poll, whether a pushed signal took effect (pure; ``now`` passed in).

Sidekiq pops one signal per heartbeat (``RPOP`` inside the beat's MULTI, which also
refreshes ``EXPIRE <identity> 60``), and reports ``quiet = "true"`` one beat later.
So, on the Redis clock:

* *delivered*: the signal list is empty and the last beat (``now - (60 s - PTTL)``)
  came after the push, within the list's 60 s life;
* *quiet*: the hash says ``quiet = "true"``;
* *vanished*: the identity left ``processes`` (Sidekiq's clean shutdown does that);
* *expired*: the list is empty 60 s after the push without a delivery: it expired
  unconsumed (the process stalled; if it stalled past 60 s its hash expired too, and it
  re-registers under the same identity when it recovers), so it is pushed again while
  the deadline allows. A hash that expired while the identity is still a member is
  waited for, not counted as gone: the process may come back.
"""

from __future__ import annotations

import dataclasses
import enum

from quiesce.decode import parse_float as _number
from quiesce.fleet import ProcessRecord
from quiesce.keys import HEARTBEAT_TTL_S, SIGNAL_TTL_S
from quiesce.plan import Outcome
from quiesce.rows import PollRow

SIGNAL_TTL_MS = SIGNAL_TTL_S * 1000
BEAT_CLOCK_SLACK_MS = 250
"""TIME is read first in a poll pipeline and each PTTL a few ms later: allow for that."""


class Until(enum.StrEnum):
    DELIVERED = "delivered"
    QUIET = "quiet"


class Verdict(enum.Enum):
    WAITING = "waiting"
    CONFIRMED = "confirmed"
    VANISHED = "vanished"
    REPUSH = "repush"


@dataclasses.dataclass(slots=True)
class Target:
    """Mutable progress of one signalled process during the wait."""

    record: ProcessRecord
    pushed_at_ms: int
    pushes: int = 1
    outcome: Outcome = Outcome.PENDING
    confirmed_at_ms: int | None = None
    last_beat_ms: int | None = None
    """Redis-clock time of the newest beat seen, when the hash has a TTL."""
    last_row: PollRow | None = None
    beat_seen: float | None = None
    """The ``beat`` field at the last push, to notice beats of hashes with no TTL."""

    @property
    def identity(self) -> str:
        return self.record.identity

    @property
    def done(self) -> bool:
        return self.outcome is not Outcome.PENDING

    def popped_by_beat(self, row: PollRow) -> bool:
        """A beat after the push, while the signal list was still alive, emptied it."""
        if self.last_beat_ms is not None and self.last_beat_ms >= self.pushed_at_ms + SIGNAL_TTL_MS:
            return False  # that beat may have found the list already expired
        return self.beat_since_push(row)

    def beat_since_push(self, row: PollRow) -> bool:
        if self.last_beat_ms is not None:
            return self.last_beat_ms >= self.pushed_at_ms - BEAT_CLOCK_SLACK_MS
        beat = _number(row.beat)
        return beat is not None and beat != self.beat_seen


def assess(target: Target, row: PollRow, now_ms: int, until: Until) -> Verdict:
    target.last_row = row
    if not row.in_set:
        return Verdict.VANISHED
    hash_alive = row.pttl_ms != -2
    if row.pttl_ms >= 0:
        target.last_beat_ms = now_ms - (HEARTBEAT_TTL_S * 1000 - row.pttl_ms)
    if hash_alive and row.quiet == "true":
        return Verdict.CONFIRMED
    if (
        hash_alive
        and until is Until.DELIVERED
        and row.signals_len == 0
        and target.popped_by_beat(row)
    ):
        return Verdict.CONFIRMED
    if row.signals_len == 0 and now_ms - target.pushed_at_ms >= SIGNAL_TTL_MS:
        return Verdict.REPUSH
    return Verdict.WAITING


def apply(target: Target, verdict: Verdict, now_ms: int) -> None:
    if verdict is Verdict.CONFIRMED:
        target.outcome = Outcome.CONFIRMED
        target.confirmed_at_ms = now_ms
    elif verdict is Verdict.VANISHED:
        target.outcome = Outcome.VANISHED


def repushed(target: Target, pushed_at_ms: int, row: PollRow) -> None:
    target.pushed_at_ms = pushed_at_ms
    target.pushes += 1
    target.beat_seen = _number(row.beat)


def finalize(target: Target) -> None:
    """At the deadline: a target still pending is stalled (no beat since the push) or not.

    Never polled (``--timeout 0``): nothing is known about it, so only "not confirmed".
    """
    if target.done:
        return
    row = target.last_row
    stalled = row is not None and not target.beat_since_push(row)
    target.outcome = Outcome.STALLED if stalled else Outcome.NOT_CONFIRMED
