"""Redis and Fly faults during the commands other than ``quiet`` (issue 10, part 3).

Each test has its own redis-server (``crash_and_restart`` and ``client_pause`` would
break the session's). The release command's own faults are in tests/test_verdict.py.
A Redis that never answers is ``CLIENT PAUSE ALL``: it accepts connections and reads
commands but answers nothing, not even a new connection's handshake, until it lifts.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

import quiesce.runs.rejoin as rejoin_run
from quiesce.adapters.fly import FlyClient, FlyConfig
from quiesce.adapters.prometheus import QuiesceCollector, make_registry
from quiesce.adapters.redis.store import SidekiqStore
from quiesce.errors import ExitCode
from quiesce.runs.rejoin import RejoinOptions, RejoinWatch
from quiesce.settings import build_settings
from quiesce.sim.fly import machine_json
from quiesce.sim.simulator import make_processes
from tests.support import RedisServer, client_pause, crash, crash_and_restart, restart
from tests.support.cli import run
from tests.support.fly import FakeFly, fake_fly
from tests.support.rejoin import Fleets, finish_rejoin, seen_waiting, spawn_rejoin

__all__ = ["fake_fly"]

PAUSE_MS = 30_000
"""Longer than any command below may take: the server is killed at the end anyway."""
LIMIT_S = 60
"""Upper bound on any one command here (a failure, never a measurement)."""


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


@pytest.fixture
def fleets(server: RedisServer) -> Iterator[Fleets]:
    f = Fleets(server.url)
    yield f
    f.close()


def _cli(url: str, *args: str) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "quiesce", "--redis-url", url, *args],
        capture_output=True,
        text=True,
        timeout=LIMIT_S,
    )
    return proc.returncode, proc.stdout, proc.stderr


def _scrape(store: SidekiqStore) -> str:
    from prometheus_client import generate_latest

    return generate_latest(make_registry(QuiesceCollector(store))).decode()


def _store(url: str, connect_timeout_s: float = 3.0, read_timeout_s: float = 5.0) -> SidekiqStore:
    settings = build_settings(
        urls=[url], connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s
    )
    return SidekiqStore(settings.redis[0], settings)


# -- Redis restarting -------------------------------------------------------------------
def test_rejoin_wait_rides_out_a_redis_restart_and_finishes(
    server: RedisServer, fleets: Fleets
) -> None:
    old = make_processes(2, seed=41)
    fleet = fleets.start(old)
    code, out, err = run("--redis-url", server.url, "quiet", "--until", "quiet")
    assert code == 0, out + err
    waiting = spawn_rejoin(server.url, "--timeout", "50s", "--interval", "0.1")
    seen_waiting(waiting)
    crash_and_restart(server)  # every key gone, the deploy record too
    for process in old:
        fleets.replace(process, fleet)
    code, out, err = finish_rejoin(waiting)
    assert code == 0, out + err
    assert "2 of 2 expected Machines back" in out and "fleet whole" in out
    assert "deploy record gone from Redis" in out
    assert "Traceback" not in err


def test_rejoin_wait_with_redis_down_ends_at_the_deadline_with_exit_7(
    server: RedisServer, fleets: Fleets
) -> None:
    fleets.start(make_processes(2, seed=43))
    code, out, err = run("--redis-url", server.url, "quiet", "--until", "quiet")
    assert code == 0, out + err
    waiting = spawn_rejoin(
        server.url, "--timeout", "3s", "--interval", "0.1", "--connect-timeout", "0.5"
    )
    seen_waiting(waiting)
    crash(server)
    code, out, err = finish_rejoin(waiting)
    assert code == ExitCode.NOT_WHOLE, out + err
    assert "Redis unavailable mid-wait" in out and "fleet NOT whole" in out
    assert "Traceback" not in err


def test_exporter_scrapes_say_down_then_up_across_a_restart(server: RedisServer) -> None:
    store = _store(server.url, connect_timeout_s=0.5, read_timeout_s=1.0)
    try:
        assert "quiesce_up 1.0" in _scrape(store)
        crash(server)
        assert "quiesce_up 0.0" in _scrape(store)
        restart(server)
        assert "quiesce_up 1.0" in _scrape(store)  # the same store reconnects
    finally:
        store.close()


# -- a Redis that accepts the connection and never answers ------------------------------
def test_status_against_a_silent_redis_exits_4_with_one_line(server: RedisServer) -> None:
    client_pause(server, PAUSE_MS)
    code, out, err = _cli(server.url, "--read-timeout", "0.5", "--connect-timeout", "0.5", "status")
    assert code == ExitCode.REDIS_UNAVAILABLE, out + err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert out == ""


def test_rejoin_wait_against_a_redis_gone_silent_ends_with_exit_7(
    server: RedisServer, fleets: Fleets
) -> None:
    fleets.start(make_processes(2, seed=47))
    code, out, err = run("--redis-url", server.url, "quiet", "--until", "quiet")
    assert code == 0, out + err
    waiting = spawn_rejoin(
        server.url, "--timeout", "3s", "--interval", "0.1", "--read-timeout", "0.5"
    )
    seen_waiting(waiting)
    client_pause(server, PAUSE_MS)
    code, out, err = finish_rejoin(waiting)
    assert code == ExitCode.NOT_WHOLE, out + err
    assert "Redis unavailable mid-wait" in out
    assert "Traceback" not in err


def test_a_scrape_of_a_silent_redis_is_down_not_hung(server: RedisServer) -> None:
    store = _store(server.url, connect_timeout_s=0.5, read_timeout_s=0.5)
    try:
        assert "quiesce_up 1.0" in _scrape(store)
        client_pause(server, PAUSE_MS)
        assert "quiesce_up 0.0" in _scrape(store)
    finally:
        store.close()


# -- the Fly API timing out mid-wait ----------------------------------------------------
def test_fly_timing_out_mid_wait_falls_back_and_says_so(
    server: RedisServer, fleets: Fleets, fake_fly: FakeFly, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = make_processes(2, seed=53)
    fleet = fleets.start(old)
    code, out, err = run("--redis-url", server.url, "quiet", "--until", "quiet")
    assert code == 0, out + err
    listing = [machine_json(p.hostname) for p in old]
    fake_fly.answer("GET", "/v1/apps/my-app/machines", 200, listing)
    fake_fly.answer("GET", "/v1/apps/my-app/machines", 200, listing, delay_s=2.0)  # from now on
    monkeypatch.setattr(rejoin_run, "FLY_LIST_INTERVAL_S", 0.0)
    fly = FlyClient(
        FlyConfig(app="my-app", token="FlyV1 fm2_x", base_url=fake_fly.url),
        timeout_s=0.2,
        attempts=1,
    )
    store = _store(server.url)
    replaced: list[Any] = []

    def replace_one(report: Any, remaining: float) -> None:
        if len(fake_fly.requests) >= 2 and len(replaced) < len(old):
            replaced.append(fleets.replace(old[len(replaced)], fleet))
            time.sleep(0.5)  # let the new process beat once

    try:
        watch = RejoinWatch([store], fly, RejoinOptions(timeout_s=LIMIT_S, interval_s=0.1))
        report = watch.wait(replace_one)
    finally:
        fly.close()
        store.close()
    assert report.whole, report
    assert any("Fly API unavailable, using the last list" in n for n in report.notes)
    assert "did not answer within 0.2 s" in " ".join(report.notes)


def test_a_hung_fly_api_does_not_hold_the_wait_past_its_end(
    server: RedisServer, fleets: Fleets, fake_fly: FakeFly
) -> None:
    """The client's own bounds (10 s a request, 4 attempts) would hold the wait for up to
    40 s; within a wait each list gets only the time left (at least fly.MIN_REQUEST_S)."""
    old = make_processes(2, seed=59)
    fleets.start(old)
    code, out, err = run("--redis-url", server.url, "quiet", "--until", "quiet")
    assert code == 0, out + err
    hung_s = 30.0
    listing = [machine_json(p.hostname) for p in old]
    fake_fly.answer("GET", "/v1/apps/my-app/machines", 200, listing, delay_s=hung_s)
    fly = FlyClient(FlyConfig(app="my-app", token="FlyV1 fm2_x", base_url=fake_fly.url))
    store = _store(server.url)
    wait_s = 2.0
    try:
        watch = RejoinWatch([store], fly, RejoinOptions(timeout_s=wait_s, interval_s=0.2))
        started = time.monotonic()
        report = watch.wait()
        took = time.monotonic() - started
    finally:
        fly.close()
        store.close()
    assert not report.whole and {m.state.value for m in report.machines} == {"missing"}
    assert any("Fly API unavailable, using heartbeats alone" in n for n in report.notes)
    # A bound on a hang, with a wide margin, not a measurement: unbounded it takes >= 30 s.
    assert took < hung_s / 3, took
