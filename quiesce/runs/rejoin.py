"""``quiesce rejoin``: read, judge, and with ``--wait`` poll until the fleet is whole.

Each poll costs one snapshot per Redis server (``SSCAN`` + one pipeline, whatever the
fleet size) and at most one Fly ``GET /machines`` (one request for the whole app), the
list being fetched at most every ``FLY_LIST_INTERVAL_S`` (Fly allows an app-scoped
action about once a second; five seconds leaves room for flyctl, which deploys at the
same time with the same token). A Fly list that fails transiently mid-wait is a note
and the last list is reused; a refused token or an unknown app stops the command. In a
wait each list gets only the time left (``budget_s``), so a hung API cannot hold the
command more than about a second past its end.

Redis faults mid-wait: a poll that finds Redis unreachable (restarting, failing over,
not answering within the read timeout) is a note and the wait goes on with the last
report, so the command ends at its deadline with exit 7 (not whole), never earlier with
a connection error; only the first poll's failure stops it. A Redis that comes back
empty has lost the deploy record: the one read at the start of the wait is used.
The clock and sleep are injected so the loop can be tested without waiting.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from quiesce.errors import ConfigError, FlyRefused, FlyUnavailable, RedisUnavailable
from quiesce.model.filters import Filters
from quiesce.model.machines import FlyMachine
from quiesce.model.record import DeployRecord
from quiesce.model.rejoin import RejoinReport, filters_problem, rejoin_report
from quiesce.model.snapshot import FleetSnapshot
from quiesce.runs.read import FleetReader, read_fleet

FLY_LIST_INTERVAL_S = 5.0
POLL_INTERVAL_S = 5.0


class MachineLister(Protocol):
    """The port rejoin needs from Fly; ``quiesce.adapters.fly.FlyClient`` implements it."""

    def list_machines(
        self, process_group: str | None = None, *, budget_s: float | None = None
    ) -> list[FlyMachine]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class RejoinOptions:
    filters: Filters = dataclasses.field(default_factory=Filters)
    release: str | None = None
    process_group: str | None = None
    allow_newer: bool = False
    timeout_s: float = 20 * 60.0
    interval_s: float = POLL_INTERVAL_S
    fly_note: str | None = None
    """Why the Fly API is not used (no token, no app), said in the report."""
    stopped_ok: bool = False
    """Machines Fly shows stopped are not expected back (``--stopped-ok``)."""
    scope: str | None = None
    """Whose deploy history to judge (``quiet.scope_of``, as ``quiesce quiet`` wrote it)."""


class RejoinWatch:
    def __init__(
        self,
        stores: Sequence[FleetReader],
        fly: MachineLister | None,
        options: RejoinOptions,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.stores, self.fly, self.options = stores, fly, options
        self.clock, self.sleep = clock, sleep
        self.machines: list[FlyMachine] | None = None
        self.fly_calls = 0
        self.polls = 0
        self._listed_at: float | None = None
        self._notes: list[str] = []
        self._record: DeployRecord | None = None
        self._end: float | None = None
        self.interrupted = False
        """``wait`` ended by Ctrl-C or TERM: its report is the last poll's."""

    def _list(self) -> None:
        if self.fly is None:
            return
        now = self.clock()
        if self._listed_at is not None and now - self._listed_at < FLY_LIST_INTERVAL_S:
            return
        self._listed_at = now
        self.fly_calls += 1
        try:
            # In a wait, a hung API holds it at most about a second past its end.
            budget = None if self._end is None else self._end - now
            self.machines = self.fly.list_machines(self.options.process_group, budget_s=budget)
        except FlyRefused:
            raise
        except FlyUnavailable as exc:
            using = "the last list" if self.machines else "heartbeats alone"
            self._note(f"Fly API unavailable, using {using}: {exc}")

    def _note(self, note: str) -> None:
        if note not in self._notes:
            self._notes.append(note)

    def _retry(self, report: RejoinReport, deadline: float, *, final: bool) -> RejoinReport:
        """A poll after the first: Redis unreachable keeps the last report (with a note)."""
        try:
            return self.poll(deadline, final=final)
        except RedisUnavailable as exc:
            note = f"Redis unavailable mid-wait, kept the last report: {exc}"
            self._note(note)
            notes = report.notes if note in report.notes else (*report.notes, note)
            return dataclasses.replace(report, notes=notes)

    def snapshot(self) -> FleetSnapshot:
        return read_fleet(
            self.stores, allow_newer=self.options.allow_newer, scope=self.options.scope
        )

    def poll(self, deadline: float | None, *, final: bool = False) -> RejoinReport:
        """One snapshot, at most one Machine list, one report. ``deadline`` is on the
        Redis clock; ``final``: the wait is over, so what is not back is missing."""
        self.polls += 1
        snapshot = self.snapshot()
        record = snapshot.latest_deploy
        if record is None and self._record is not None:
            record = self._record
            self._note("deploy record gone from Redis (restarted empty?): using the one read first")
        if record is None:
            problem = f" ({snapshot.deploy_problem})" if snapshot.deploy_problem else ""
            scope = f" for {self.options.scope}" if self.options.scope else ""
            raise ConfigError(
                f"no quiesce deploy record{scope} in Redis: run `quiesce quiet` as the "
                "release command first (on Fly it records the app: give the same --app or "
                f"FLY_APP_NAME here){problem}"
            )
        if self._record is None:
            unmatched = filters_problem(self.options.filters, snapshot, record)
            if unmatched is not None:
                raise ConfigError(unmatched)
        self._record = self._record or record
        self._list()
        notes = list(self._notes)
        if self.fly is None and self.options.fly_note:
            notes.append(f"Fly API not used: {self.options.fly_note}")
        if deadline is None:
            deadline = record.started_at + self.options.timeout_s
        if final:
            deadline = min(deadline, snapshot.taken_at)
        return rejoin_report(
            record,
            snapshot,
            self.machines if self.fly is not None else None,
            deadline=deadline,
            filters=self.options.filters,
            release=self.options.release,
            notes=notes,
            stopped_ok=self.options.stopped_ok,
            process_group=self.options.process_group,
        )

    def wait(self, on_report: Callable[[RejoinReport, float], None] | None = None) -> RejoinReport:
        """Poll until the fleet is whole or ``timeout_s`` passes (then a final report)."""
        started = self.clock()
        end = self._end = started + self.options.timeout_s
        # The wait's own deadline, on the Redis clock of its first snapshot: an old record
        # must not make every Machine "missing" from the first poll on.
        report = self.poll(math.inf)
        deadline = report.now + self.options.timeout_s
        report = dataclasses.replace(report, deadline=deadline)
        try:
            while not report.whole:
                remaining = end - self.clock()
                if on_report is not None:
                    on_report(report, remaining)
                if remaining <= 0:
                    return self._retry(report, deadline, final=True)
                self.sleep(min(self.options.interval_s, max(0.05, remaining)))
                report = self._retry(report, deadline, final=self.clock() >= end)
        except KeyboardInterrupt:
            # The operator (or Fly's TERM) ends the wait: what was known is still the answer.
            self.interrupted = True
            waited = self.clock() - started
            note = (
                f"interrupted after {waited:.0f}s of --wait (deadline not reached): the report "
                "is the last poll's; Machines not back may still be coming"
            )
            return dataclasses.replace(report, notes=(*report.notes, note))
        return report
