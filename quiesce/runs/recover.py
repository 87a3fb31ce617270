"""``quiesce recover``'s actions: restart candidates through Fly, or TERM them through
Sidekiq's signal list. Choosing the candidates is pure (``model.recover``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from quiesce.errors import FlyProblem, QuiesceError, RedisRefused
from quiesce.model.recover import Candidate
from quiesce.runs.read import FleetReader
from quiesce.sidekiq.rows import Push


class Restarter(Protocol):
    def list_machines(self, process_group: str | None = None) -> list[object]: ...

    def restart_machine(self, machine_id: str) -> None: ...


class StopStore(FleetReader, Protocol):
    def push_stop(self, identities: Sequence[str], *, deadline: float | None = None) -> Push: ...


def restart_all(
    fly: Restarter,
    candidates: Sequence[Candidate],
    on_result: Callable[[str, str], None] | None = None,
) -> dict[str, str]:
    """Restart each candidate Fly lists in the app; go on past failures. ``on_result``
    hears each Machine's result as it happens (a recovery of 500 Machines takes minutes)."""
    listed = {getattr(m, "id", None) for m in fly.list_machines()}
    results = {}
    for c in candidates:
        if c.machine not in listed:
            results[c.machine] = "skipped: not a Machine of this app (Fly does not list it)"
        else:
            try:
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
