"""Fast unit tests of the Redis adapter over fakeredis (the real server is tested elsewhere)."""

from __future__ import annotations

import fakeredis
import pytest

from quiesce.adapters.redis.store import SidekiqStore
from quiesce.model.decode import decode_snapshot
from quiesce.model.fleet import ProcessState
from quiesce.settings import build_settings
from quiesce.sidekiq.keys import Keys
from quiesce.sim.simulator import SimulatedFleet, SimulatedProcess, make_processes


@pytest.fixture
def fake() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(decode_responses=True)


def store(fake: fakeredis.FakeRedis, namespace: str = "") -> SidekiqStore:
    settings = build_settings(urls=["redis://fake:6379/0"], environ={}, namespace=namespace)
    return SidekiqStore(settings.redis[0], settings, client=fake)


def beat(fake: fakeredis.FakeRedis, procs: list[SimulatedProcess], namespace: str = "") -> None:
    SimulatedFleet(fake, procs, keys=Keys(namespace)).beat(procs, 1000.0)


def test_snapshot_reads_and_never_writes(fake: fakeredis.FakeRedis) -> None:
    procs = make_processes(3, seed=1, version="8.1.7")
    s = store(fake)
    beat(fake, procs)
    fake.sadd("processes", "gone:1:000000000000")
    before = {k: fake.type(k) for k in fake.scan_iter()}
    snap = decode_snapshot(s.read_fleet())
    assert {k: fake.type(k) for k in fake.scan_iter()} == before
    states = {p.identity: p.state for p in snap.processes}
    assert states["gone:1:000000000000"] is ProcessState.DEAD
    assert sum(st is ProcessState.RUNNING for st in states.values()) == 3
    assert all(p.concurrency == 5 for p in snap.processes if p.alive)


def test_member_that_is_not_a_hash_is_unreadable(fake: fakeredis.FakeRedis) -> None:
    fake.sadd("processes", "weird:1:abcdefabcdef")
    fake.set("weird:1:abcdefabcdef", "a string, not a hash")
    snap = decode_snapshot(store(fake).read_fleet())
    (proc,) = snap.processes
    assert proc.state is ProcessState.UNREADABLE and proc.problem and "WRONGTYPE" in proc.problem


def test_namespace_prefixes_keys_only(fake: fakeredis.FakeRedis) -> None:
    proc = make_processes(1, seed=2, version="6.4.1")[0]
    s = store(fake, "app")
    beat(fake, [proc], "app")
    assert fake.smembers("app:processes") == {proc.identity}
    assert fake.exists(f"app:{proc.identity}")
    (decoded,) = decode_snapshot(s.read_fleet()).processes
    assert decoded.identity == proc.identity and decoded.alive


def test_poll_rows(fake: fakeredis.FakeRedis) -> None:
    proc = make_processes(1, seed=3)[0]
    s = store(fake)
    beat(fake, [proc])
    fake.lpush(f"{proc.identity}-signals", "TSTP")
    fake.hset("odd:1:000000000000-signals", "x", "1")
    (row, missing, odd) = s.poll(
        [proc.identity, "nobody:1:000000000000", "odd:1:000000000000"]
    ).rows
    assert row.in_set and row.quiet == "false" and row.signals_len == 1
    assert row.pttl_ms is not None and 0 < row.pttl_ms <= 60000
    assert not missing.in_set and missing.pttl_ms == -2
    assert odd.error is not None and "WRONGTYPE" in odd.error  # an error, never "exited"


def test_mark_deploy_lock_then_hsetnx(fake: fakeredis.FakeRedis) -> None:
    s = store(fake)
    assert s.mark_deploy("v1", "20261126", "2026-11-26T07:25:00Z")
    assert not s.mark_deploy("v1", "20261126", "2026-11-26T07:25:00Z")  # lock held 60 s
    assert fake.hgetall("20261126-marks") == {"2026-11-26T07:25:00Z": "v1"}
    assert fake.get("deploylock-v1") == "2026-11-26T07:25:00Z"
    assert 0 < fake.ttl("deploylock-v1") <= 60
