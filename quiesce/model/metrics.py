"""Every metric ``quiesce exporter`` serves, derived from one scrape's data (pure).

Names follow Prometheus' conventions: the ``quiesce_`` prefix, base units with the unit
as suffix, no ``_total`` (everything here is a gauge: a snapshot of Redis, not a count
this exporter keeps). Labels are bounded: never identity or pid; ``machine`` only with
``per_machine`` (small fleets). Label values pass through ``label_value`` (bytes that are
not UTF-8 become ``\\xff`` escapes, a backslash ``\\\\``); the exposition then escapes
quotes, backslashes and newlines once more, as the text format requires.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

from quiesce.model.capacity import (
    PostgresStats,
    bounded,
    clients_by_library,
    pool_size,
    sidekiq_pools,
)
from quiesce.model.fleet import BEAT_MARGIN_S, ProcessRecord, ProcessState
from quiesce.model.queues import PauseReason, QueuesView, view_queues
from quiesce.model.record import DeployRecord
from quiesce.model.rejoin import process_generation, snapshot_rejoin
from quiesce.model.snapshot import FleetSnapshot
from quiesce.sidekiq.rows import RawQueues


@dataclasses.dataclass(frozen=True, slots=True)
class Family:
    name: str
    help: str
    labels: tuple[str, ...] = ()
    samples: tuple[tuple[tuple[str, ...], float], ...] = ()
    unit: str = ""


_ESCAPED = re.compile("[\\\\\udc80-\udcff]")


def label_value(text: str) -> str:
    """Distinct names stay distinct: a byte that is not UTF-8 becomes ``\\xff`` and a
    literal backslash ``\\\\``, so ``bad\\xffbyte`` typed by someone and a raw 0xFF byte
    never share a series (Prometheus would silently drop one of two equal series)."""
    return _ESCAPED.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    return "\\\\" if ch == "\\" else f"\\x{ord(ch) - 0xDC00:02x}"


class _Families:
    def __init__(self) -> None:
        self.out: list[Family] = []

    def add(
        self,
        name: str,
        help: str,
        samples: Mapping[tuple[str, ...], float] | float | None,
        labels: Sequence[str] = (),
        unit: str = "",
    ) -> None:
        if samples is None:
            return
        if isinstance(samples, int | float):
            rows: tuple[tuple[tuple[str, ...], float], ...] = (((), float(samples)),)
        else:
            rows = tuple(
                (tuple(label_value(v) for v in key), float(value))
                for key, value in sorted(samples.items())
            )
        self.out.append(Family(name, help, tuple(labels), rows, unit))


@dataclasses.dataclass(frozen=True, slots=True)
class ScrapeData:
    """Everything one scrape read (None where a part could not be read)."""

    fleet: FleetSnapshot | None
    queues: RawQueues | None
    postgres: PostgresStats | None = None
    postgres_configured: bool = False


def generation(
    proc: ProcessRecord,
    deploy: DeployRecord | None,
    old: frozenset[str] | None = None,
    taken_at: float | None = None,
) -> str:
    """``old``: in the latest deploy record's fleet, or started before its quiet; ``new``:
    started since (``rejoin.process_generation``: the rule rejoin and status use);
    ``unknown``: no record, or no start time to tell.

    ``old``: the record's identities, built once per scrape (a fleet of 10,000 would
    otherwise compare every process with every entry). ``taken_at``: the snapshot's Redis
    time, which measures each process's clock offset (None: left unmeasured)."""
    if deploy is None:
        return "unknown"
    return process_generation(proc, deploy, old, taken_at)


def _version(proc: ProcessRecord) -> str:
    return proc.version.text if proc.version is not None else "unknown"


def _count(samples: dict[tuple[str, ...], float], key: tuple[str, ...], n: float = 1.0) -> None:
    samples[key] = samples.get(key, 0.0) + n


def process_families(f: _Families, fleet: FleetSnapshot, *, per_machine: bool) -> None:
    deploy = fleet.latest_deploy
    old = frozenset(e.identity for e in deploy.fleet) if deploy is not None else None
    gens = {p.identity: generation(p, deploy, old, fleet.taken_at) for p in fleet.processes}
    release = (deploy.release or "") if deploy is not None else ""
    by_state: dict[tuple[str, ...], float] = {(s.value,): 0.0 for s in ProcessState}
    by_release: dict[tuple[str, ...], float] = {}
    threads: dict[tuple[str, ...], float] = {}
    busy: dict[tuple[str, ...], float] = {}
    machines: dict[tuple[str, ...], float] = {}
    pools: dict[tuple[str, ...], float] = {}
    for proc in fleet.processes:
        gen = gens[proc.identity]
        state = proc.state.value
        key = (state, gen, release if gen == "new" else "", _version(proc))
        _count(by_state, (state,))
        _count(by_release, key)
        if proc.alive:
            _count(threads, key, proc.concurrency or 0)
            _count(busy, key, proc.busy or 0)
            _count(pools, (gen,), pool_size(proc))
        if per_machine:
            _count(machines, (proc.machine, state))
    per = ("state", "generation", "release", "sidekiq_version")
    f.add("quiesce_processes", "Sidekiq processes in the registry by state.", by_state, ("state",))
    f.add(
        "quiesce_release_processes",
        "Sidekiq processes by state, deploy generation (old: running when the latest deploy "
        "started, new: started since), release (the deploy's, for new ones) and version.",
        by_release,
        per,
    )
    f.add("quiesce_threads", "Sum of concurrency of live processes.", threads, per)
    f.add("quiesce_busy_threads", "Jobs running at the last heartbeat.", busy, per)
    if per_machine:
        f.add(
            "quiesce_machine_processes",
            "Sidekiq processes per Machine (hostname) and state.",
            machines,
            ("machine", "state"),
        )
    live = [p for p in fleet.processes if p.alive and p.beat_age_s is not None]
    f.add(
        "quiesce_heartbeat_age_max_seconds",
        "Longest time since a live process's last heartbeat (Redis clock).",
        max((p.beat_age_s or 0.0 for p in live), default=0.0),
        unit="seconds",
    )
    f.add(
        "quiesce_heartbeat_overdue_processes",
        f"Live processes whose heartbeat is older than their interval plus {BEAT_MARGIN_S:g} s.",
        float(sum(1 for p in fleet.processes if p.alive and p.is_stalled)),
    )
    signals: dict[tuple[str, ...], float] = {("TSTP",): 0.0, ("TERM",): 0.0}
    for proc in fleet.processes:
        for name in proc.pending_signals:
            _count(signals, (name if name in ("TSTP", "TERM", "TTIN") else "other",))
    f.add(
        "quiesce_pending_signals",
        "Signals pushed to <identity>-signals and not yet consumed by a heartbeat.",
        signals,
        ("signal",),
    )
    f.add(
        "quiesce_quiet_max_age_seconds",
        "How long the longest-quiet process has been quiet (from the deploy record's "
        "confirmation; 0 when none is quiet or none was confirmed by quiesce).",
        _quiet_max_age(fleet),
        unit="seconds",
    )
    f.add(
        "quiesce_estimated_pool_connections",
        "Redis connections Sidekiq's pools may open, by deploy generation: concurrency plus "
        "Sidekiq's own per-process pool (5, or 10 from 7.1.1). Pools are lazy: a ceiling.",
        pools,
        ("generation",),
    )


def _quiet_max_age(fleet: FleetSnapshot) -> float:
    deploy = fleet.latest_deploy
    if deploy is None:
        return 0.0
    ages = [
        fleet.taken_at - since
        for p in fleet.processes
        if p.alive and p.state is ProcessState.QUIET
        for since in (deploy.quiet_since(p.identity),)
        if since is not None
    ]
    return max(0.0, max(ages, default=0.0))


def deploy_families(f: _Families, fleet: FleetSnapshot) -> None:
    deploy = fleet.latest_deploy
    if deploy is None:
        return
    f.add(
        "quiesce_deploy_info",
        "The latest deploy quiesce recorded (always 1).",
        {(deploy.deploy_id, deploy.release or "", deploy.strategy, deploy.state.value): 1.0},
        ("deploy_id", "release", "strategy", "state"),
    )
    f.add(
        "quiesce_deploy_start_timestamp_seconds",
        "When the latest deploy started (epoch seconds, Redis clock).",
        deploy.started_at,
        unit="seconds",
    )
    outcomes: dict[tuple[str, ...], float] = {}
    for entry in deploy.outcomes.values():
        _count(outcomes, (entry.outcome,))
    f.add(
        "quiesce_deploy_outcome_processes",
        "Processes per outcome of the latest deploy's quiet.",
        outcomes,
        ("outcome",),
    )
    report = snapshot_rejoin(fleet)
    if report is not None:
        machines: dict[tuple[str, ...], float] = {}
        for machine in report.machines:
            _count(machines, (machine.state.value,))
        f.add(
            "quiesce_rejoin_machines",
            "Machines per rejoin state after the latest deploy (heartbeats and release labels: "
            "the exporter does not ask Fly).",
            machines,
            ("state",),
        )
        f.add(
            "quiesce_rejoin_whole",
            "1 when every expected Machine is back since the latest deploy, else 0.",
            1.0 if report.whole else 0.0,
        )


def connection_families(f: _Families, fleet: FleetSnapshot, queues: RawQueues | None) -> None:
    server = fleet.servers[0] if fleet.servers else None
    if server is not None:
        f.add(
            "quiesce_redis_connected_clients",
            "Redis INFO connected_clients.",
            server.connected_clients,
        )
        f.add("quiesce_redis_maxclients", "Redis INFO maxclients.", server.maxclients)
        pools = sidekiq_pools(fleet.processes)
        if server.connected_clients is not None:
            f.add(
                "quiesce_redis_projected_peak_clients",
                "connected_clients plus every live Sidekiq process's pools again: the peak "
                "while two generations run side by side (bluegreen).",
                float(server.connected_clients + pools),
            )
        deploy = fleet.latest_deploy
        base = _baseline(deploy, server.redis)
        if base and server.connected_clients is not None:
            f.add(
                "quiesce_redis_clients_baseline_ratio",
                "connected_clients now over connected_clients when the latest deploy started.",
                server.connected_clients / base,
                unit="ratio",
            )
    if queues is not None:
        listed = queues.client_list is not None
        f.add(
            "quiesce_redis_client_list_available",
            "1 when CLIENT LIST is allowed (quiesce_redis_clients is exported), else 0.",
            1.0 if listed else 0.0,
        )
        if queues.client_list is not None:
            libs = clients_by_library(queues.client_list)
            f.add(
                "quiesce_redis_clients",
                "Redis clients by the library they announced (CLIENT SETINFO lib-name; "
                "Sidekiq 8.1.5+ tags its own), from CLIENT LIST.",
                {(k,): float(v) for k, v in libs.items()},
                ("library",),
            )


def _baseline(deploy: DeployRecord | None, label: str) -> int | None:
    if deploy is None:
        return None
    for entry in deploy.servers:
        if entry.redis == label and entry.connected_clients:
            return entry.connected_clients
    return None


def queue_families(f: _Families, view: QueuesView) -> None:
    sizes: dict[tuple[str, ...], float] = {}
    latencies: dict[tuple[str, ...], float] = {}
    consumers: dict[tuple[str, ...], float] = {}
    paused: dict[tuple[str, ...], float] = {}
    unconsumed: dict[tuple[str, ...], float] = {}
    for q in view.queues:
        if q.size is not None:
            sizes[(q.name,)] = q.size
        if q.latency_s is not None:
            latencies[(q.name,)] = q.latency_s
        consumers[(q.name,)] = q.consumers
        for reason in PauseReason:
            paused[(q.name, reason.value)] = 1.0 if reason in q.reasons else 0.0
        if q.unconsumed_s is not None:
            unconsumed[(q.name,)] = q.unconsumed_s
    f.add("quiesce_queue_size", "Jobs waiting in queue:<name> (LLEN).", sizes, ("queue",))
    f.add(
        "quiesce_queue_latency_seconds",
        "How long the oldest job has waited (enqueued_at, else created_at; float seconds "
        "and Sidekiq 8 integer milliseconds both read).",
        latencies,
        ("queue",),
        unit="seconds",
    )
    f.add(
        "quiesce_queue_consumers",
        "Running (not quiet) processes listening on the queue.",
        consumers,
        ("queue",),
    )
    f.add(
        "quiesce_queue_paused",
        "1 when the queue is paused for this reason: no_consumer (no running process "
        "listens: the fleet is quiet) or pro_paused (in Sidekiq Pro's paused set).",
        paused,
        ("queue", "reason"),
    )
    f.add(
        "quiesce_queue_unconsumed_seconds",
        "How long since the last consumer of a queue without consumers went quiet or "
        "stopped beating (only where known).",
        unconsumed,
        ("queue",),
        unit="seconds",
    )
    f.add(
        "quiesce_paused_jobs",
        "Jobs nothing will run until a consumer comes back: queued in paused queues, and "
        "scheduled/retry jobs already due while no process runs (quiet processes stop "
        "the scheduler).",
        {
            ("queued",): float(view.paused_queued_jobs),
            ("scheduled",): float(view.paused_due_jobs(view.schedule_due)),
            ("retry",): float(view.paused_due_jobs(view.retry_due)),
        },
        ("kind",),
    )
    due: dict[tuple[str, ...], float] = {}
    if view.schedule_due is not None:
        due[("schedule",)] = view.schedule_due
    if view.retry_due is not None:
        due[("retry",)] = view.retry_due
    f.add("quiesce_due_jobs", "Scheduled/retry jobs whose time has come.", due, ("set",))


def postgres_families(f: _Families, stats: PostgresStats | None, configured: bool) -> None:
    if not configured:
        return
    f.add("quiesce_postgres_up", "1 when PostgreSQL could be read.", 1.0 if stats else 0.0)
    if stats is None:
        return
    f.add(
        "quiesce_postgres_backends",
        "PostgreSQL client backends by application_name (the exporter's own excluded).",
        {(k,): float(v) for k, v in bounded(stats.backends).items()},
        ("application_name",),
    )
    f.add("quiesce_postgres_max_connections", "PostgreSQL max_connections.", stats.max_connections)
    f.add(
        "quiesce_postgres_projected_peak_backends",
        "Client backends counted twice: the peak while two generations run (bluegreen).",
        float(stats.total * 2),
    )


def families(data: ScrapeData, *, per_machine: bool = False) -> list[Family]:
    """The metric families for one scrape; parts that could not be read are left out."""
    f = _Families()
    if data.fleet is not None:
        process_families(f, data.fleet, per_machine=per_machine)
        deploy_families(f, data.fleet)
        connection_families(f, data.fleet, data.queues)
        if data.queues is not None:
            queue_families(f, view_queues(data.queues, data.fleet))
    postgres_families(f, data.postgres, data.postgres_configured)
    return f.out
