"""The states a Machine can be in after a deploy, and the rejoin report's types (pure).

``quiesce.model.rejoin`` judges; this holds what it returns, for the views, the
exporter and ``recover`` (``docs/verdicts.md`` says what each state rests on).
"""

from __future__ import annotations

import dataclasses
import enum

from quiesce.model.generation import same_image
from quiesce.model.machines import FlyMachine


class MachineState(enum.StrEnum):
    REJOINED = "rejoined"
    """As many counted new processes as it had before (on the deployed image, with Fly)."""
    PARTIAL = "partial"
    """Some counted new processes, fewer than before (a swarm still booting)."""
    STARTING = "starting"
    """A new process that has not yet beaten for a whole heartbeat interval."""
    DRAINING = "draining"
    """An old process alive, quiet and still running jobs."""
    QUIET_IDLE = "quiet-idle"
    """An old process alive, quiet, running nothing: waiting to be replaced."""
    OLD_RUNNING = "old-running"
    """An old process alive and not quiet (nor quieting, ``fleet.is_quieting``), or a
    process not in the record that is not new (started before the quiet, or labelled with
    another release): it takes jobs with the old code."""
    OLD_IMAGE = "old-image"
    """Fly lists it started on another release or image than the deploy's."""
    PENDING = "pending"
    """No live process yet."""
    MISSING = "missing"
    """Still not back at the deadline."""
    GONE = "gone"
    """Fly no longer lists it (or lists it destroyed), and no new Machine of its group
    took its slot yet."""
    REPLACED = "replaced"
    """Gone (or, bluegreen, a quiet blue), and a new Machine of its group took its slot."""
    STOPPED = "stopped"
    """Ran Sidekiq at the quiet, Fly says stopped now: not back (``--stopped-ok``)."""
    NOT_EXPECTED = "not-expected"
    """Stopped, and the user said stopped Machines are expected (``--stopped-ok``)."""
    CONFLICT = "conflict"
    """A live process claims this Machine id, but Fly lists it stopped, gone or not at all."""
    NEW = "new"
    """Not in the record, back: bluegreen's green Machines, a new id, or a scale-up."""


BACK = frozenset({MachineState.REJOINED, MachineState.NEW})
SETTLED = BACK | {MachineState.REPLACED, MachineState.NOT_EXPECTED}
"""Expected Machines in these states do not keep the fleet from being whole."""
WAITING = frozenset(
    {
        MachineState.PARTIAL,
        MachineState.STARTING,
        MachineState.DRAINING,
        MachineState.QUIET_IDLE,
        MachineState.OLD_RUNNING,
        MachineState.PENDING,
        MachineState.MISSING,
    }
)
BROKEN = frozenset({MachineState.OLD_IMAGE, MachineState.STOPPED, MachineState.CONFLICT})
"""Not back, and waiting will not fix it: someone must look."""
NOT_BACK = WAITING | BROKEN | {MachineState.GONE}
"""What the report lists as not back."""


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """What the deploy put on the Machines, as far as it is known."""

    release_version: str = ""
    image_ref: str = ""
    source: str = ""
    """``record`` (the release command asked Fly), ``fly-newest`` (the newest release in
    Fly's list: the record has none), ``label`` (``--release``/the record's label, an image
    reference), or ``""`` (unknown: the image is not checked)."""

    @property
    def known(self) -> bool:
        return bool(self.release_version or self.image_ref)

    def matches(self, machine: FlyMachine) -> bool | None:
        """Whether Fly shows ``machine`` on this target; None when it cannot be told."""
        if self.release_version and machine.release_version:
            return machine.release_version == self.release_version
        if self.image_ref and machine.image_ref:
            return same_image(machine.image_ref, self.image_ref)
        return None

    def describe(self) -> str:
        parts = [f"release {self.release_version}" if self.release_version else ""]
        parts.append(f"image {self.image_ref}" if self.image_ref else "")
        return ", ".join(p for p in parts if p) or "unknown"


NO_TARGET = Target()


@dataclasses.dataclass(frozen=True, slots=True)
class MachineRejoin:
    machine: str
    state: MachineState
    group: str
    expected: bool
    old_processes: int
    """Processes it hosted when the fleet was quieted (0 for a new Machine)."""
    new_processes: int
    """Counted new processes now (live, not quiet, kept beating; on target with Fly)."""
    busy: int = 0
    """Jobs its old, quiet processes are still running."""
    quiet_at: float | None = None
    """When this deploy confirmed its processes quiet (Redis clock), the earliest."""
    rejoined_at: float | None = None
    """When its last needed new process started (Redis clock, skew-corrected)."""
    fly_state: str | None = None
    region: str = ""
    release_version: str = ""
    process_group: str = ""
    image_ref: str = ""
    why: str = ""
    """For a state that needs one: what it rests on (``old-image``: which release)."""

    @property
    def paused_s(self) -> float | None:
        """From the quiet confirmation to the new process: how long it took no jobs."""
        if self.quiet_at is None or self.rejoined_at is None:
            return None
        return max(0.0, self.rejoined_at - self.quiet_at)


@dataclasses.dataclass(frozen=True, slots=True)
class GroupCount:
    group: str
    expected: int
    """Expected Machines, stopped ones the user expects (not-expected) left out."""
    back: int
    """Rejoined expected Machines plus new ones."""
    not_expected: int = 0
    replaced: int = 0

    @property
    def whole(self) -> bool:
        return self.back >= self.expected


@dataclasses.dataclass(frozen=True, slots=True)
class RejoinReport:
    deploy_id: str
    release: str | None
    strategy: str
    quiet_at: float
    """The record's start (Redis clock)."""
    now: float
    machines: tuple[MachineRejoin, ...]
    groups: tuple[GroupCount, ...]
    whole: bool
    with_fly: bool
    notes: tuple[str, ...] = ()
    deadline: float | None = None
    target: Target = NO_TARGET
    grouped_by: str = "fly"
    """``fly`` (process groups) or ``tag`` (Fly never told us: Sidekiq tags)."""

    @property
    def since_quiet_s(self) -> float:
        return max(0.0, self.now - self.quiet_at)

    def counts(self) -> dict[MachineState, int]:
        out = dict.fromkeys(MachineState, 0)
        for m in self.machines:
            out[m.state] += 1
        return out

    @property
    def not_back(self) -> tuple[MachineRejoin, ...]:
        return tuple(m for m in self.machines if m.state in NOT_BACK)

    @property
    def expected(self) -> int:
        return sum(g.expected for g in self.groups)

    @property
    def back(self) -> int:
        return sum(min(g.back, g.expected) for g in self.groups)

    def _rejoins(self) -> list[MachineRejoin]:
        return [m for m in self.machines if m.state in BACK and m.rejoined_at is not None]

    @property
    def first_rejoin_s(self) -> float | None:
        times = [m.rejoined_at for m in self._rejoins() if m.rejoined_at is not None]
        return max(0.0, min(times) - self.quiet_at) if times else None

    @property
    def last_rejoin_s(self) -> float | None:
        times = [m.rejoined_at for m in self._rejoins() if m.rejoined_at is not None]
        return max(0.0, max(times) - self.quiet_at) if times else None

    @property
    def longest_pause(self) -> MachineRejoin | None:
        paused = [m for m in self.machines if m.paused_s is not None]
        return max(paused, key=lambda m: m.paused_s or 0.0, default=None)
