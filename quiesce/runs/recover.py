"""``quiesce recover``'s actions: restart candidates through Fly, or TERM them through
Sidekiq's signal list. Choosing the candidates is pure (``model.recover``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from quiesce.errors import ConfigError, FlyProblem, QuiesceError, RedisRefused
from quiesce.model.filters import Filters
from quiesce.model.machines import FlyMachine
from quiesce.model.recover import Candidate, RecoverReport, stranded
from quiesce.model.rejoin import Target, deploy_target, filters_problem
from quiesce.runs.read import FleetReader, read_fleet
from quiesce.sidekiq.rows import Push


class Restarter(Protocol):
    def get_machine(self, machine_id: str) -> FlyMachine: ...

    def restart_machine(self, machine_id: str) -> None: ...


class StopStore(FleetReader, Protocol):
    def push_stop(self, identities: Sequence[str], *, deadline: float | None = None) -> Push: ...


def restart_all(
    fly: Restarter,
    candidates: Sequence[Candidate],
    on_result: Callable[[str, str], None] | None = None,
) -> dict[str, str]:
    """Restart each candidate (already checked against Fly's list by ``stranded``); go on
    past failures. Each Machine's state is read again just before its restart: a
    recovery of 500 Machines takes minutes, and a deploy may start on one meanwhile.
    ``on_result`` hears each Machine's result as it happens."""
    results = {}
    for c in candidates:
        try:
            state = fly.get_machine(c.machine).state
            if state != "started":
                results[c.machine] = f"skipped: Fly lists it {state or 'in no state'} now"
            else:
                fly.restart_machine(c.machine)
                results[c.machine] = "restarted"
        except FlyProblem as exc:
            results[c.machine] = f"failed: {exc}"
        if on_result is not None:
            on_result(c.machine, results[c.machine])
    return results


def stop_all(stores: Sequence[StopStore], candidates: Sequence[Candidate]) -> dict[str, str]:
    """TERM for every candidate's processes: one MULTI per server."""
    results: dict[str, str] = {}
    for store in stores:
        mine = [
            (c.machine, ident)
            for c in candidates
            for ident, label in zip(c.identities, c.redis, strict=True)
            if label == store.label
        ]
        if not mine:
            continue
        try:
            push = store.push_stop([ident for _, ident in mine])
        except RedisRefused as exc:
            if not results:  # an ACL (or TLS, or password) refusal before any TERM went out
                raise RedisRefused(f"{exc.reason}; nothing was stopped", url=exc.url) from exc
            for machine, _ in mine:
                results[machine] = f"failed: {exc}"
            continue
        except QuiesceError as exc:
            for machine, _ in mine:
                results[machine] = f"failed: {exc}"
            continue
        for machine, ident in mine:
            if ident in push.errors:
                results[machine] = f"failed: {push.errors[ident]}"
            else:
                results.setdefault(machine, "stopped (TERM sent)")
    return results


class RecoverFly(Restarter, Protocol):
    def list_machines(
        self, process_group: str | None = None, *, budget_s: float | None = None
    ) -> list[FlyMachine]: ...


def recover(
    stores: Sequence[StopStore],
    fly: RecoverFly | None,
    *,
    filters: Filters,
    scope: str,
    after_s: float,
    action: str,
    apply: bool,
    fly_note: str | None = None,
    on_result: Callable[[str, str], None] | None = None,
) -> RecoverReport:
    """One recovery: read the fleet with its running jobs and the scope's history, check
    Fly's view when there is one, choose the stranded Machines (``model.recover``), and
    with ``apply`` restart or stop them. Filters that match nothing are a ``ConfigError``."""
    snapshot = read_fleet(stores, jobs=True, scope=scope)
    problem = filters_problem(filters, snapshot, snapshot.latest_deploy)
    if problem is not None:
        raise ConfigError(problem)
    notes: list[str] = []
    machines = None
    if fly is not None:
        machines = fly.list_machines()
    else:
        notes.append(f"Fly API not used ({fly_note}): the Machines' state and image not checked")
    target = Target()
    if snapshot.latest_deploy is not None:
        # The record's target only: Fly's newest release may be the very one the stranded
        # Machines run when the deploy failed before updating any.
        target, _ = deploy_target(snapshot.latest_deploy, None)
    candidates, skipped = stranded(
        snapshot,
        snapshot.history,
        after_s=after_s,
        filters=filters,
        machines=machines,
        target=target,
    )
    notes.extend(skipped)
    results: dict[str, str] = {}
    if apply and candidates and action == "restart" and fly is not None:
        results = restart_all(fly, candidates, on_result)
    elif apply and candidates and action == "stop":
        results = stop_all(stores, candidates)
    return RecoverReport(
        action, apply and bool(candidates), tuple(candidates), results, tuple(notes)
    )
