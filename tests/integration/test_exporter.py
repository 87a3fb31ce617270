"""The exporter's collector against a real Redis: captured Sidekiq data, simulated fleets,
faults (Redis gone between scrapes, a hung Redis, odd queue names, 10,000 queues)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from quiesce.adapters.prometheus import QuiesceCollector, make_registry
from quiesce.adapters.redis.store import SidekiqStore
from quiesce.model.record import DeployRecord
from quiesce.runs.read import read_fleet
from quiesce.settings import build_settings
from quiesce.sidekiq import keys as k
from quiesce.sidekiq.work import job_time
from quiesce.sim.simulator import make_processes
from tests.support import (
    FIXTURES,
    RedisServer,
    acl_user,
    client_pause,
    crash,
    load_fixture_keys,
    restart,
    simulated_fleet,
)

VERSIONS = ("6.4.1", "7.3.10", "8.1.7")


def open_store(url: str, **settings: Any) -> SidekiqStore:
    built = build_settings(urls=[url], **settings)
    return SidekiqStore(built.redis[0], built)


@pytest.fixture
def store(redis_url: str) -> Iterator[SidekiqStore]:
    s = open_store(redis_url)
    yield s
    s.close()


def scrape(store: SidekiqStore, **kw: Any) -> CollectorRegistry:
    """A registry whose every ``get_sample_value`` sees one scrape: collected once, frozen."""
    families = list(QuiesceCollector(store, **kw).collect())
    registry = CollectorRegistry(auto_describe=False)

    class Frozen:
        def collect(self) -> Any:
            return families

        def describe(self) -> list[Any]:
            return []

    registry.register(Frozen())
    return registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def load(raw: redis.Redis, version: str, scenario: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (FIXTURES / f"sidekiq-{version}" / f"{scenario}.json").read_text()
    )
    load_fixture_keys(raw, data["keys"])
    return data


def redis_time(raw: redis.Redis) -> float:
    seconds, micros = raw.time()
    return float(seconds) + micros / 1e6


def oldest_enqueued(data: dict[str, Any], queue: str) -> float:
    job = json.loads(data["keys"][f"queue:{queue}"]["value"][-1])
    parsed = job_time(job["enqueued_at"])
    assert parsed is not None
    return parsed[0]


def due(data: dict[str, Any], zset: str, now: float) -> int:
    spec = data["keys"].get(zset)
    return 0 if spec is None else sum(1 for _, score in spec["value"] if float(score) <= now)


# -- captured Sidekiq data ------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
def test_quiet_fleet_with_waiting_jobs(raw: redis.Redis, store: SidekiqStore, version: str) -> None:
    data = load(raw, version, "after-quiet-enqueue")
    before = redis_time(raw)
    reg = scrape(store)
    after = redis_time(raw)
    assert value(reg, "quiesce_up") == 1
    assert value(reg, "quiesce_processes", state="quiet") == 1
    assert value(reg, "quiesce_processes", state="running") == 0
    assert value(reg, "quiesce_queue_size", queue="default") == 3
    assert value(reg, "quiesce_queue_size", queue="low") == 1
    for queue in ("default", "low"):
        assert value(reg, "quiesce_queue_paused", queue=queue, reason="no_consumer") == 1
        assert value(reg, "quiesce_queue_paused", queue=queue, reason="pro_paused") == 0
        assert value(reg, "quiesce_queue_consumers", queue=queue) == 0
        latency = value(reg, "quiesce_queue_latency_seconds", queue=queue)
        enqueued = oldest_enqueued(data, queue)
        assert latency is not None
        assert before - enqueued - 0.01 <= latency <= after - enqueued + 0.01
    # Quiet processes stop the scheduler: due scheduled and retry jobs are paused work too.
    assert value(reg, "quiesce_paused_jobs", kind="queued") == 4
    assert value(reg, "quiesce_paused_jobs", kind="scheduled") == due(data, "schedule", before)
    assert value(reg, "quiesce_paused_jobs", kind="retry") == due(data, "retry", before)
    assert value(reg, "quiesce_scrape_redis_round_trips") == 2


@pytest.mark.parametrize("version", VERSIONS)
def test_busy_process_threads_and_consumed_queues(
    raw: redis.Redis, store: SidekiqStore, version: str
) -> None:
    load(raw, version, "busy")
    reg = scrape(store)
    labels = {"state": "running", "generation": "unknown", "release": "", "sidekiq_version": ""}
    sample = next(
        s
        for fam in reg.collect()
        if fam.name == "quiesce_busy_threads"
        for s in fam.samples
        if s.labels["state"] == "running"
    )
    labels["sidekiq_version"] = sample.labels["sidekiq_version"]
    assert value(reg, "quiesce_busy_threads", **labels) == 2
    assert value(reg, "quiesce_threads", **labels) == 2
    assert value(reg, "quiesce_queue_consumers", queue="default") == 1
    assert value(reg, "quiesce_queue_paused", queue="default", reason="no_consumer") == 0
    assert value(reg, "quiesce_paused_jobs", kind="queued") == 0
    if version == "6.4.1":  # no info.version before 7.0.2: inferred from the fields written
        assert "-" in labels["sidekiq_version"]
    else:
        assert labels["sidekiq_version"] == version


@pytest.mark.parametrize("version", VERSIONS)
def test_due_jobs_while_running_are_not_paused(
    raw: redis.Redis, store: SidekiqStore, version: str
) -> None:
    data = load(raw, version, "with-scheduled")
    now = redis_time(raw)
    reg = scrape(store)
    assert value(reg, "quiesce_due_jobs", set="retry") == due(data, "retry", now)
    assert value(reg, "quiesce_due_jobs", set="schedule") == due(data, "schedule", now)
    assert value(reg, "quiesce_paused_jobs", kind="retry") == 0
    assert value(reg, "quiesce_paused_jobs", kind="scheduled") == 0


# -- latency -------------------------------------------------------------------------
def test_latency_from_ms_seconds_and_created_at(raw: redis.Redis, store: SidekiqStore) -> None:
    now = redis_time(raw)
    jobs = {
        "ms": {"enqueued_at": int((now - 30) * 1000), "created_at": int((now - 99) * 1000)},
        "s": {"enqueued_at": now - 20.0},
        "created": {"created_at": int((now - 10) * 1000)},
        "garbage": {"enqueued_at": "soon"},
        "future": {"enqueued_at": now + 500.0},
    }
    raw.sadd(k.Keys().queues, *jobs)
    for name, job in jobs.items():
        raw.lpush(k.Keys().queue(name), json.dumps(job))
    reg = scrape(store)
    after = redis_time(raw)
    for name, age in (("ms", 30), ("s", 20), ("created", 10)):
        latency = value(reg, "quiesce_queue_latency_seconds", queue=name)
        assert latency is not None and age - 0.01 <= latency <= age + (after - now) + 0.01
    assert value(reg, "quiesce_queue_latency_seconds", queue="garbage") is None
    assert value(reg, "quiesce_queue_size", queue="garbage") == 1
    assert value(reg, "quiesce_queue_latency_seconds", queue="future") == 0


# -- simulated fleets: generations, paused reasons, quiet age ------------------------------
def test_generations_release_and_quiet_age(raw: redis.Redis, redis_url: str) -> None:
    old = make_processes(3, version="7.3.10", seed=1, queues=("default", "low"))
    sim = simulated_fleet(redis_url, old)
    sim.beat(old, time.time())
    store = open_store(redis_url)
    snapshot = read_fleet([store])
    started = snapshot.taken_at - 120
    record = DeployRecord.start(
        deploy_id="d1",
        release="v42",
        strategy="bluegreen",
        started_at=started,
        until="delivered",
        timeout_s=30,
        processes=snapshot.processes,
        servers=snapshot.servers,
        quiesce_version="test",
    )
    from quiesce.model.record_entries import OutcomeEntry

    record = record.with_outcomes(
        {p.identity: OutcomeEntry("confirmed", started + 1, started + 11, 1) for p in old}
    )
    raw.set(k.Keys().latest_deploy, record.to_json())
    for p in old:
        p.quiet = True
    new = make_processes(2, version="8.1.7", seed=2, queues=("default",))
    sim.processes.extend(new)
    sim.beat([*old, *new], time.time())
    raw.sadd(k.Keys().queues, "default", "low", "paused-by-pro")
    raw.lpush(k.Keys().queue("low"), json.dumps({"enqueued_at": time.time()}))
    raw.sadd(k.Keys().paused, "paused-by-pro")

    reg = scrape(store)
    old_labels = {"state": "quiet", "generation": "old", "release": "", "sidekiq_version": "7.3.10"}
    new_labels = {"state": "running", "generation": "new", "release": "v42"}
    assert value(reg, "quiesce_release_processes", **old_labels) == 3
    assert value(reg, "quiesce_release_processes", **new_labels, sidekiq_version="8.1.7") == 2
    assert value(reg, "quiesce_threads", **new_labels, sidekiq_version="8.1.7") == 10
    age = value(reg, "quiesce_quiet_max_age_seconds")
    assert age is not None and 109 <= age <= 111 + 5
    assert value(reg, "quiesce_deploy_info", deploy_id="d1", release="v42",
                 strategy="bluegreen", state="pending") == 1  # fmt: skip
    assert value(reg, "quiesce_deploy_start_timestamp_seconds") == started
    assert value(reg, "quiesce_deploy_outcome_processes", outcome="confirmed") == 3
    # "low": only the quiet old generation listened; "default": the new one consumes it.
    assert value(reg, "quiesce_queue_paused", queue="low", reason="no_consumer") == 1
    assert value(reg, "quiesce_queue_paused", queue="default", reason="no_consumer") == 0
    assert value(reg, "quiesce_queue_paused", queue="paused-by-pro", reason="pro_paused") == 1
    unconsumed = value(reg, "quiesce_queue_unconsumed_seconds", queue="low")
    assert unconsumed is not None and 109 <= unconsumed <= 111 + 5
    assert value(reg, "quiesce_paused_jobs", kind="queued") == 1
    # Pools: 7.3.10 has the 10-connection internal pool, as 8.1.7 does.
    assert value(reg, "quiesce_estimated_pool_connections", generation="old") == 3 * (5 + 10)
    assert value(reg, "quiesce_estimated_pool_connections", generation="new") == 2 * (5 + 10)
    clients = value(reg, "quiesce_redis_connected_clients")
    assert clients is not None
    assert value(reg, "quiesce_redis_projected_peak_clients") == clients + 5 * 15
    store.close()
    sim.client.close()


def test_labels_are_bounded(raw: redis.Redis, redis_url: str, store: SidekiqStore) -> None:
    procs = make_processes(4, version="8.1.7", per_machine=2, seed=3)
    sim = simulated_fleet(redis_url, procs)
    sim.beat(procs, time.time())
    text = generate_latest(make_registry(QuiesceCollector(store))).decode()
    for p in procs:
        assert p.identity not in text and p.hostname not in text
    per_machine = scrape(store, per_machine=True)
    machine = procs[0].hostname
    assert value(per_machine, "quiesce_machine_processes", machine=machine, state="running") == 2
    sim.client.close()


# -- faults ------------------------------------------------------------------------------
def test_registering_touches_no_redis() -> None:
    store = open_store("redis://127.0.0.1:1/0")  # nothing listens on port 1
    registry = CollectorRegistry()  # auto_describe on, as the global registry has it
    registry.register(QuiesceCollector(store))
    assert store.round_trips == 0


def test_redis_stopped_between_scrapes() -> None:
    with RedisServer() as server:
        procs = make_processes(2, version="8.1.7", seed=4)
        sim = simulated_fleet(server.url, procs)
        sim.beat(procs, time.time())
        store = open_store(server.url, read_timeout_s=1.0, connect_timeout_s=1.0)
        collector = QuiesceCollector(store)
        registry = make_registry(collector)
        assert registry.get_sample_value("quiesce_up") == 1
        assert collector.healthy() == (True, "ok")
        crash(server)
        text = generate_latest(registry).decode()  # the scrape itself succeeds
        assert "quiesce_up 0.0" in text
        assert "quiesce_scrape_duration_seconds" in text
        assert "quiesce_queue_size" not in text
        assert collector.healthy()[0] is False
        restart(server)
        sim.client.connection_pool.disconnect()
        sim.beat(procs, time.time())
        assert registry.get_sample_value("quiesce_up") == 1
        assert registry.get_sample_value("quiesce_processes", {"state": "running"}) == 2
        store.close()
        sim.client.close()


def test_scrape_timeout_header_bounds_a_hung_redis() -> None:
    with RedisServer() as server:
        store = open_store(server.url, read_timeout_s=5.0)
        collector = QuiesceCollector(store)
        registry = make_registry(collector)
        client_pause(server, 3000)
        with collector.deadline(1.0):
            text = generate_latest(registry).decode()
        assert "quiesce_up 0.0" in text
        assert collector.last_error is not None and "scrape timeout" in collector.last_error
        # The abandoned read ends by itself once Redis answers; the next read waits for it.
        assert collector.read().error is None
        assert collector.last_ok is True
        store.close()


def test_client_list_refused_degrades_quietly() -> None:
    with RedisServer() as server:
        url = acl_user(server, "-client")
        store = open_store(url)
        reg = scrape(store)
        assert value(reg, "quiesce_up") == 1
        assert value(reg, "quiesce_redis_client_list_available") == 0
        assert value(reg, "quiesce_redis_connected_clients") is not None
        store.close()


def test_queue_name_with_quotes_and_newlines(raw: redis.Redis, store: SidekiqStore) -> None:
    name = 'we"ird\\ queue\nwith newline'
    raw.sadd(k.Keys().queues, name, "plain")
    raw.lpush(k.Keys().queue(name), json.dumps({"enqueued_at": time.time()}))
    raw.sadd("queues", b"bad\xffbyte")
    text = generate_latest(make_registry(QuiesceCollector(store))).decode()
    parsed = {
        tuple(sorted(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        if fam.name == "quiesce_queue_size"
        for s in fam.samples
    }
    # A backslash is doubled so that it cannot pass for the escape of a raw byte.
    assert parsed[(("queue", name.replace("\\", "\\\\")),)] == 1
    assert parsed[(("queue", "plain"),)] == 0
    assert parsed[(("queue", "bad\\xffbyte"),)] == 0


def test_ten_thousand_queues(raw: redis.Redis, store: SidekiqStore) -> None:
    names = [f"q{i:05d}" for i in range(10_000)]
    pipe = raw.pipeline(transaction=False)
    pipe.sadd(k.Keys().queues, *names)
    for i, name in enumerate(names):
        if i % 3 == 0:
            pipe.lpush(k.Keys().queue(name), json.dumps({"enqueued_at": time.time()}))
    pipe.execute()
    reg = scrape(store)
    assert value(reg, "quiesce_scrape_redis_round_trips") == 2
    assert value(reg, "quiesce_queue_size", queue="q09999") == 1
    assert value(reg, "quiesce_queue_size", queue="q09998") == 0
    assert value(reg, "quiesce_paused_jobs", kind="queued") == 3334
    sizes = [f for f in reg.collect() if f.name == "quiesce_queue_size"]
    assert len(sizes[0].samples) == 10_000


def test_round_trips_constant_with_fleet_size(raw: redis.Redis, redis_url: str) -> None:
    store = open_store(redis_url)
    seen = []
    for n in (1, 50, 500):
        raw.flushall()
        procs = make_processes(n, version="8.1.7", seed=n)
        sim = simulated_fleet(redis_url, procs)
        sim.beat(procs, time.time())
        sim.client.close()
        raw.sadd(k.Keys().queues, *[f"q{i}" for i in range(n)])
        reg = scrape(store)
        assert value(reg, "quiesce_processes", state="running") == n
        seen.append(value(reg, "quiesce_scrape_redis_round_trips"))
    assert seen == [2, 2, 2]
    store.close()


def test_fleet_past_one_sscan_page_is_read_whole(
    raw: redis.Redis, redis_url: str, store: SidekiqStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import quiesce.adapters.redis.store

    monkeypatch.setattr(quiesce.adapters.redis.store, "SCAN_COUNT", 10)
    procs = make_processes(300, version="8.1.7", seed=30)
    sim = simulated_fleet(redis_url, procs)
    sim.beat(procs, time.time())
    sim.client.close()
    reg = scrape(store)
    assert value(reg, "quiesce_processes", state="running") == 300
    trips = value(reg, "quiesce_scrape_redis_round_trips")
    assert trips is not None and trips > 2


def test_machines_per_rejoin_state_after_a_quiet(redis_url: str, store: SidekiqStore) -> None:
    """The rejoin report, from the same snapshot: quieted Machines wait to be replaced."""
    from quiesce.model.report import QuietOptions
    from quiesce.runs.quiet import quiet_fleet
    from tests.support import simulated_fleet

    sim = simulated_fleet(redis_url, make_processes(3, seed=5), beat_interval_s=0.3)
    with sim:
        assert quiet_fleet([open_store(redis_url)], QuietOptions(timeout_s=10)).ok
        time.sleep(0.8)  # quiet reported on the next beat
        registry = scrape(store)
    assert value(registry, "quiesce_rejoin_machines", state="quiet-idle") == 3
    assert value(registry, "quiesce_rejoin_whole") == 0
