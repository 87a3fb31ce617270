"""``quiet_fleet`` against a real redis-server and simulated Sidekiq processes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from quiesce.adapters.redis.store import SidekiqStore
from quiesce.errors import ExitCode
from quiesce.model.filters import Filters
from quiesce.model.quiet import Outcome
from quiesce.model.report import QuietOptions
from quiesce.model.verdict import Until
from quiesce.runs.quiet import quiet_fleet
from quiesce.runs.read import read_fleet
from quiesce.settings import build_settings
from quiesce.sim.simulator import SimulatedFleet, SimulatedProcess, make_processes
from tests.support import RedisServer, simulated_fleet
from tests.support.stores import store_for

FleetFactory = Callable[..., SimulatedFleet]


@pytest.fixture
def start_fleet(redis_url: str) -> Iterator[FleetFactory]:
    fleets: list[SimulatedFleet] = []

    def start(
        processes: list[SimulatedProcess],
        beat: float = 0.3,
        url: str = redis_url,
        namespace: str = "",
    ) -> SimulatedFleet:
        fleet: SimulatedFleet = simulated_fleet(
            url, processes, namespace=namespace, beat_interval_s=beat, seed=1
        )
        fleets.append(fleet.start())
        return fleet

    yield start
    for fleet in fleets:
        fleet.stop()
        assert fleet.error is None, fleet.error


def outcomes(report_entries: object) -> dict[str, Outcome]:
    return {e.process.identity: e.outcome for e in report_entries}  # type: ignore[attr-defined]


def test_large_fleet_is_quieted_and_confirmed(start_fleet: FleetFactory, redis_url: str) -> None:
    fleet = start_fleet(make_processes(1200, per_machine=4, seed=7), beat=0.5)
    store = store_for(redis_url)
    report = quiet_fleet([store], QuietOptions(timeout_s=15, release="v1"))
    assert report.exit_code is ExitCode.OK
    assert report.count(Outcome.CONFIRMED) == 1200
    assert all(p.signals_seen == ["TSTP"] for p in fleet.processes)
    assert all(p.quiet for p in fleet.processes)


@pytest.mark.parametrize("count", [1, 2000])
def test_signalling_costs_three_round_trips_whatever_the_size(
    count: int, redis_url: str, start_fleet: FleetFactory
) -> None:
    fleet = start_fleet(make_processes(count, seed=3), beat=30)
    store = store_for(redis_url)
    raw = store.read_fleet()
    push = store.push_quiet([r.identity for r in raw.rows], "TSTP")
    assert len(raw.rows) == count and not push.errors
    assert store.round_trips == 3  # SSCAN, one read pipeline, one push pipeline
    fleet.stop()


def test_until_quiet_on_a_mixed_version_fleet(
    start_fleet: FleetFactory, redis_url: str, raw: redis.Redis
) -> None:
    procs = [
        *make_processes(3, version="6.4.1", seed=1),
        *make_processes(3, version="7.3.10", seed=2),
        *make_processes(3, version="8.1.7", seed=3),
    ]
    start_fleet(procs, beat=0.3)
    report = quiet_fleet([store_for(redis_url)], QuietOptions(until=Until.QUIET, timeout_s=10))
    assert report.count(Outcome.CONFIRMED) == 9, report.entries
    for p in procs:
        assert raw.hget(p.identity, "quiet") == "true"
    versions = {e.process.version.text for e in report.entries if e.process.version}
    assert versions == {"6.2-7.0.1", "7.3.10", "8.1.7"}


def test_skips_embedded_quiet_and_dead_and_never_removes_them(
    start_fleet: FleetFactory, redis_url: str, raw: redis.Redis
) -> None:
    embedded = make_processes(1, seed=11, embedded=True)[0]
    already = make_processes(1, seed=12)[0]
    already.quiet = True
    normal = make_processes(2, seed=13)
    raw.sadd("processes", "ghost:1:0123456789ab")  # member whose hash expired long ago
    start_fleet([embedded, already, *normal])
    report = quiet_fleet([store_for(redis_url)], QuietOptions(timeout_s=10))
    assert outcomes(report.entries) == {
        embedded.identity: Outcome.EMBEDDED,
        already.identity: Outcome.ALREADY_QUIET,
        normal[0].identity: Outcome.CONFIRMED,
        normal[1].identity: Outcome.CONFIRMED,
        "ghost:1:0123456789ab": Outcome.DEAD,
    }
    assert report.exit_code is ExitCode.OK
    assert embedded.signals_seen == [] and already.signals_seen == []
    assert raw.sismember("processes", "ghost:1:0123456789ab")


def test_silent_process_fails_the_gate_others_confirmed(
    start_fleet: FleetFactory, redis_url: str
) -> None:
    """Silent for 2 s is not "hung" for a 10 s-beat Sidekiq 7: not confirmed, not stalled."""
    procs = make_processes(4, seed=21)
    fleet = start_fleet(procs)
    procs[0].stalled = True
    time.sleep(0.4)
    report = quiet_fleet([store_for(redis_url)], QuietOptions(timeout_s=2))
    assert outcomes(report.entries)[procs[0].identity] is Outcome.NOT_CONFIRMED
    assert report.count(Outcome.CONFIRMED) == 3
    assert report.exit_code is ExitCode.NOT_CONFIRMED
    fleet.stop()


def test_malformed_heartbeat_is_reported_others_quieted(
    start_fleet: FleetFactory, redis_url: str
) -> None:
    procs = make_processes(3, seed=31)
    procs[1].malformed_info = True
    start_fleet(procs)
    report = quiet_fleet([store_for(redis_url)], QuietOptions(timeout_s=10))
    out = outcomes(report.entries)
    assert out[procs[1].identity] is Outcome.UNREADABLE
    assert out[procs[0].identity] is out[procs[2].identity] is Outcome.CONFIRMED
    assert procs[1].signals_seen == []
    assert report.exit_code is ExitCode.NOT_CONFIRMED
    bad = next(e for e in report.entries if e.outcome is Outcome.UNREADABLE)
    assert bad.process.problem is not None and "not valid JSON" in bad.process.problem


def test_process_that_exits_during_the_wait_is_vanished(
    start_fleet: FleetFactory, redis_url: str
) -> None:
    procs = make_processes(3, seed=41)
    fleet = start_fleet(procs)
    procs[0].stalled = True  # never takes the signal ...
    store = store_for(redis_url)

    def exit_soon() -> None:  # ... and shuts down cleanly while we wait
        time.sleep(0.8)
        fleet.leave([procs[0]])

    threading.Thread(target=exit_soon).start()
    report = quiet_fleet([store], QuietOptions(timeout_s=5))
    assert outcomes(report.entries)[procs[0].identity] is Outcome.VANISHED
    assert report.exit_code is ExitCode.OK
    fleet.stop()


def test_returns_promptly_after_the_last_confirmation(
    start_fleet: FleetFactory, redis_url: str
) -> None:
    start_fleet(make_processes(50, seed=51), beat=1.0)
    started = time.monotonic()
    report = quiet_fleet([store_for(redis_url)], QuietOptions(timeout_s=20))
    took = time.monotonic() - started
    last = max(e.confirmed_after_s or 0 for e in report.entries)
    assert report.count(Outcome.CONFIRMED) == 50
    assert took - last < 0.5 + 0.3  # poll interval 0.4 s, plus the push itself


def test_filters_narrow_the_targets(start_fleet: FleetFactory, redis_url: str) -> None:
    web = make_processes(2, seed=61, tag="web")
    jobs = make_processes(2, seed=62, tag="jobs", queues=("critical",))
    start_fleet([*web, *jobs])
    report = quiet_fleet(
        [store_for(redis_url)], QuietOptions(filters=Filters(tags=("jobs",)), timeout_s=10)
    )
    assert sorted(outcomes(report.entries)) == sorted(p.identity for p in jobs)
    assert report.excluded == 2
    assert all(not p.quiet for p in web)


def test_dry_run_writes_nothing(
    start_fleet: FleetFactory, redis_url: str, raw: redis.Redis
) -> None:
    fleet = start_fleet(make_processes(5, seed=71))
    report = quiet_fleet([store_for(redis_url)], QuietOptions(dry_run=True, release="v9"))
    assert report.count(Outcome.PLANNED) == 5
    assert raw.keys("*-signals") == [] and raw.keys("quiesce:*") == [] and raw.keys("*marks*") == []
    time.sleep(0.5)
    assert not any(p.signals_seen for p in fleet.processes)


def test_pushes_are_exactly_what_sidekiq_api_sends(redis_url: str, raw: redis.Redis) -> None:
    """MONITOR shows Sidekiq's LPUSH <id>-signals TSTP, EXPIRE <id>-signals 60 per process,
    all inside one MULTI/EXEC (atomic for the whole fleet)."""
    identities = ["m1:1:aaaaaaaaaaaa", "m2:1:bbbbbbbbbbbb"]
    store = store_for(redis_url)
    store.members()  # connect first: only the pushes should show up below
    seen: list[str] = []
    with raw.monitor() as monitor:  # type: ignore[no-untyped-call]
        store.push_quiet(identities, "TSTP")
        while len(seen) < 7:
            seen.append(monitor.next_command()["command"])
    assert seen == [
        "TIME",
        "MULTI",
        "LPUSH m1:1:aaaaaaaaaaaa-signals TSTP",
        "EXPIRE m1:1:aaaaaaaaaaaa-signals 60",
        "LPUSH m2:1:bbbbbbbbbbbb-signals TSTP",
        "EXPIRE m2:1:bbbbbbbbbbbb-signals 60",
        "EXEC",
    ]


def test_deploy_record_and_mark(
    start_fleet: FleetFactory, redis_url: str, raw: redis.Redis
) -> None:
    procs = make_processes(2, seed=81)
    start_fleet(procs)
    report = quiet_fleet(
        [store_for(redis_url)],
        QuietOptions(release="registry.fly.io/app:deployment-01J", strategy="bluegreen"),
    )
    marks = [str(m) for m in raw.keys("*-marks")]
    assert len(marks) == 1
    ((stamp, label),) = ((str(k), str(v)) for k, v in raw.hgetall(marks[0]).items())
    assert label == "registry.fly.io/app:deployment-01J"
    assert stamp.endswith(":00Z") and stamp[:10].replace("-", "") == marks[0][:8]
    assert 89 * 86400 < raw.ttl(marks[0]) <= 90 * 86400
    assert 0 < raw.ttl("deploylock-registry.fly.io/app:deployment-01J") <= 60
    snapshot = read_fleet([store_for(redis_url)])
    deploy = snapshot.latest_deploy
    assert snapshot.deploy_problem is None
    assert deploy is not None and deploy.deploy_id == report.deploy_id
    assert deploy.strategy == "bluegreen" and deploy.state == "complete" and deploy.version == 4
    assert {f.identity for f in deploy.fleet} == {p.identity for p in procs}
    connected = deploy.servers[0].connected_clients
    assert connected is not None and connected >= 1
    assert deploy.servers[0].maxclients == 10000
    assert all(
        o.outcome == "confirmed"
        and o.pushes == 1
        and o.pushed_at is not None
        and o.confirmed_at is not None
        and o.pushed_at <= o.confirmed_at
        for o in deploy.outcomes.values()
    )
    assert 13 * 86400 < raw.ttl("quiesce:deploy:latest") <= 14 * 86400
    # A second run in the same minute does not duplicate the mark (Sidekiq's NX lock).
    quiet_fleet([store_for(redis_url)], QuietOptions(release="registry.fly.io/app:deployment-01J"))
    assert len(raw.hgetall(marks[0])) == 1


def test_namespace_prefixes_keys_not_members(
    start_fleet: FleetFactory, redis_url: str, raw: redis.Redis
) -> None:
    procs = make_processes(2, seed=91, version="6.4.1")
    start_fleet(procs, namespace="myapp")
    assert raw.smembers("myapp:processes") == {p.identity for p in procs}
    report = quiet_fleet([store_for(redis_url, "myapp")], QuietOptions(timeout_s=10))
    assert report.count(Outcome.CONFIRMED) == 2
    assert raw.exists("myapp:quiesce:deploy:latest") and not raw.exists("processes")


def test_sharded_redis_every_server_is_covered(start_fleet: FleetFactory, redis_url: str) -> None:
    with RedisServer() as second:
        a = make_processes(3, seed=101)
        b = make_processes(4, seed=102)
        start_fleet(a)
        fleet_b = start_fleet(b, url=second.url)
        settings = build_settings(urls=[f"{redis_url},{second.url}"], environ={})
        stores = [SidekiqStore(t, settings) for t in settings.redis]
        report = quiet_fleet(stores, QuietOptions(timeout_s=10))
        assert report.count(Outcome.CONFIRMED) == 7
        assert {e.process.redis for e in report.entries} == {redis_url, second.url}
        fleet_b.stop()
