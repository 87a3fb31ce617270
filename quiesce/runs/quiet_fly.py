"""What the release command learns from Fly while it waits: the Machine list and the
target release, read beside the wait (never in its way) and added to the record."""

from __future__ import annotations

import dataclasses
import threading
from typing import Protocol

from quiesce.errors import (
    QuiesceError,
)
from quiesce.model.machines import FlyMachine
from quiesce.model.record import DeployRecord
from quiesce.model.record_entries import FlyTarget, MachineEntry
from quiesce.model.report import (
    QuietOptions,
)
from quiesce.runs.confirm import QuietRun


class FlyReader(Protocol):
    """What the quiet needs of Fly; ``quiesce.adapters.fly.FlyClient`` implements it."""

    app: str

    def list_machines(
        self, process_group: str | None = None, *, budget_s: float | None = None
    ) -> list[FlyMachine]: ...

    def get_machine(self, machine_id: str, *, budget_s: float | None = None) -> FlyMachine: ...


FLY_BUDGET_S = 15.0
"""Most time the quiet gives Fly (Machine list, then the release Machine), retries
included: the signal is out already, and the wait must not lose much to a hung API."""


@dataclasses.dataclass(frozen=True, slots=True)
class _FlyView:
    target: FlyTarget | None
    machines: tuple[MachineEntry, ...] = ()
    checked: bool = False
    notes: tuple[str, ...] = ()


def _read_fly(options: QuietOptions, fly: FlyReader | None, budget_s: float) -> _FlyView:
    """What Fly says: the app's Machines and the target release (the release Machine's
    metadata), within ``budget_s`` per call. Any failure is one note, ``checked`` false."""
    app = fly.app if fly is not None else options.fly_app
    target = None
    if app:
        target = FlyTarget(app, options.image_ref or "", None, options.release_machine)
    if fly is None:
        return _FlyView(
            target,
            notes=(
                f"Fly not checked ({options.fly_missing or 'no Fly API client'}): the deploy "
                "record has no Machine list, so rejoin cannot verify images (give the "
                "release command FLY_API_TOKEN)",
            ),
        )
    try:
        machines = fly.list_machines(budget_s=budget_s)
    except QuiesceError as exc:
        return _FlyView(
            target, notes=(f"Fly not checked: {exc}; the deploy record has no Machine list",)
        )
    notes: tuple[str, ...] = ()
    if target is not None and options.release_machine:
        try:
            own = fly.get_machine(options.release_machine, budget_s=budget_s)
        except QuiesceError as exc:
            notes = (f"target release not recorded: {exc}",)
        else:
            target = dataclasses.replace(target, release_version=own.release_version or None)
    entries = tuple(MachineEntry.from_machine(m) for m in machines)
    return _FlyView(target, entries, True, notes)


class _FlyInBackground:
    """The Fly read beside the wait, so a slow or hung Fly API never takes time from the
    confirmations: started after the push, collected when the wait ends, and given up
    (one note, ``fly_checked`` false) if it is still running at the wait's deadline."""

    def __init__(self, run: QuietRun, fly: FlyReader | None) -> None:
        self.run = run
        self.fly = fly
        self.view: _FlyView | None = None
        self.thread = threading.Thread(target=self._read, name="quiesce-fly", daemon=True)
        if fly is not None:
            self.thread.start()

    def _read(self) -> None:
        self.view = _read_fly(self.run.options, self.fly, FLY_BUDGET_S)

    def apply(self, record: DeployRecord) -> DeployRecord:
        run = self.run
        if self.fly is None:
            view = _read_fly(run.options, None, 0.0)
        else:
            # An interrupted or broken run reports at once: Fly is not waited for then.
            wait_s = 0.0 if run.error is not None else run.deadline - run.clock()
            self.thread.join(min(FLY_BUDGET_S, max(0.0, wait_s)))
            view = self.view or _FlyView(
                _read_fly(run.options, None, 0.0).target,
                notes=("Fly not checked: no answer from the Fly API by the deadline",),
            )
        for text in view.notes:
            run.note(text)
        return record.with_fly(view.target, view.machines, checked=view.checked)


def _with_fly(run: QuietRun, record: DeployRecord, fly: FlyReader | None) -> DeployRecord:
    """The record with what Fly says, read now (nothing was signalled: no wait to spare);
    notes go into the report only."""
    view = _read_fly(run.options, fly, min(FLY_BUDGET_S, max(0.0, run.deadline - run.clock())))
    run.notes.extend(view.notes)
    return record.with_fly(view.target, view.machines, checked=view.checked)
