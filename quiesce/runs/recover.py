"""``quiesce recover``'s actions: restart candidates through Fly, or TERM them through
Sidekiq's signal list. Choosing the candidates is pure (``model.recover``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from quiesce.errors import FlyProblem, QuiesceError, RedisRefused
from quiesce.model.machines import FlyMachine
from quiesce.model.recover import Candidate
from quiesce.runs.read import FleetReader
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
