"""The release command's verdict under faults, against a real redis-server.

Each test is a way the verdict used to say OK (or stop the fleet) when it should not:
a Redis that restarts empty mid-wait, a signal list of the wrong type, a Redis user that
may push but not poll, a full ``maxmemory``, a Redis that hangs, one server given twice,
filters that match nothing, and a fleet registered somewhere else.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from quiesce.adapters.redis.store import SidekiqStore
from quiesce.errors import ExitCode, RedisRefused
from quiesce.model.quiet import Outcome
from quiesce.model.report import QuietOptions, QuietReport
from quiesce.runs.quiet import quiet_fleet
from quiesce.settings import build_settings
from quiesce.sim.simulator import SimulatedFleet, make_processes
from tests.support import RedisServer, simulated_fleet


def store_for(url: str, **settings: Any) -> SidekiqStore:
    built = build_settings(urls=[url], environ={}, **settings)
    return SidekiqStore(built.redis[0], built)


def cli(*args: str, timeout: float = 60) -> tuple[int, str, str, float]:
    """The real command in a child process (its own clock, its own sockets)."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "quiesce", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


@pytest.fixture
def fleet(redis_url: str) -> Iterator[SimulatedFleet]:
    sim: SimulatedFleet = simulated_fleet(
        redis_url, make_processes(4, per_machine=2, seed=17), beat_interval_s=0.3
    )
    with sim:
        yield sim


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


# -- a Redis that restarts empty ------------------------------------------------------
def crash_and_restart_empty(server: RedisServer) -> RedisServer:
    """kill -9, then a fresh, empty redis-server on the same port (no persistence)."""
    server.proc.kill()
    server.proc.wait()
    return RedisServer(port=server.port)


def test_redis_restarting_empty_mid_wait_never_yields_a_false_ok() -> None:
    """The processes vanish with their data and re-register without the signal: quiesce
    must push again and say OK only once every one of them really took TSTP."""
    server = RedisServer()
    replacement: RedisServer | None = None
    procs = make_processes(4, seed=23)
    sim: SimulatedFleet = simulated_fleet(server.url, procs, beat_interval_s=2.0)
    try:
        sim.start()
        time.sleep(0.2)
        raw = server.client(decode_responses=True)
        result: list[QuietReport] = []
        worker = threading.Thread(
            target=lambda: result.append(
                quiet_fleet([store_for(server.url)], QuietOptions(timeout_s=25))
            )
        )
        worker.start()
        wait_for(lambda: raw.exists(*(f"{p.identity}-signals" for p in procs)) > 0)
        replacement = crash_and_restart_empty(server)
        worker.join(timeout=40)
        (report,) = result
        untaken = [p.identity for p in procs if "TSTP" not in p.signals_seen]
        assert report.ok == (not untaken), (report.entries, untaken)
        assert report.ok, report.entries  # the wait is long enough for them to re-register
        assert all(p.quiet for p in procs)
        assert any("restarted" in note for note in report.notes)
        assert replacement.client(decode_responses=True).scard("processes") == 4  # re-registered
        assert Outcome.VANISHED not in {e.outcome for e in report.entries}
    finally:
        sim.stop()
        server.stop()
        if replacement is not None:
            replacement.stop()


# -- one bad key never stops the fleet, and is never read as an exit ------------------
def test_a_signal_list_of_the_wrong_type_fails_that_process_only(
    redis_url: str, fleet: SimulatedFleet, raw: redis.Redis
) -> None:
    odd = fleet.processes[1]
    raw.hset(f"{odd.identity}-signals", "x", "1")
    code, out, _, _ = cli("--redis-url", redis_url, "quiet", "--timeout", "10", "--json")
    report = json.loads(out)
    by_id = {p["identity"]: p for p in report["processes"]}
    assert code == ExitCode.NOT_CONFIRMED and not report["ok"]
    assert by_id[odd.identity]["outcome"] == "signal_failed"
    assert "WRONGTYPE" in by_id[odd.identity]["reason"]
    others = [p for p in fleet.processes if p is not odd]
    assert {by_id[p.identity]["outcome"] for p in others} == {"confirmed"}
    assert not odd.quiet and raw.hgetall(f"{odd.identity}-signals") == {"x": "1"}  # untouched
    assert raw.sismember("processes", odd.identity)


# -- refused before any signal goes out --------------------------------------------
def acl_user(raw: redis.Redis, name: str, *rules: str) -> None:
    raw.acl_setuser(
        name,
        enabled=True,
        passwords=["+pw"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", *rules],
    )


def test_a_user_that_may_push_but_not_poll_is_refused_before_any_signal(
    redis_url: str, fleet: SimulatedFleet, raw: redis.Redis
) -> None:
    acl_user(raw, "nopttl", "-pttl")
    url = redis_url.replace("redis://", "redis://nopttl:pw@")
    code, out, err, _ = cli("--redis-url", url, "quiet", "--timeout", "10")
    assert code == ExitCode.REDIS_REFUSED, (out, err)
    assert "ACL" in err and "pttl" in err.lower() and "pw@" not in err + out
    assert raw.keys("*-signals") == [] and raw.keys("quiesce:*") == []
    assert not any(p.signals_seen for p in fleet.processes)


def test_a_user_without_time_degrades_to_the_local_clock(
    redis_url: str, fleet: SimulatedFleet, raw: redis.Redis
) -> None:
    acl_user(raw, "notime", "-time", "-info")
    url = redis_url.replace("redis://", "redis://notime:pw@")
    code, out, err, _ = cli("--redis-url", url, "quiet", "--timeout", "10")
    assert code == ExitCode.OK, (out, err)
    assert all(p.quiet or "TSTP" in p.signals_seen for p in fleet.processes)


def test_maxmemory_full_signals_nobody_and_says_so(
    redis_url: str, fleet: SimulatedFleet, raw: redis.Redis
) -> None:
    fleet.stop()  # registered (hashes live for 60 s), no longer writing
    raw.config_set("maxmemory", "1")
    try:
        code, out, err, _ = cli("--redis-url", redis_url, "quiet", "--timeout", "5")
    finally:
        raw.config_set("maxmemory", "0")
    assert code == ExitCode.REDIS_REFUSED, (out, err)
    assert "out of memory" in err and "nothing was signalled" in err
    assert raw.keys("*-signals") == [] and raw.keys("quiesce:*") == []


# -- time ------------------------------------------------------------------------
def test_a_hung_redis_cannot_stretch_the_wait_past_timeout_plus_one_read_timeout(
    redis_url: str, raw: redis.Redis
) -> None:
    procs = make_processes(3, seed=29)
    sim: SimulatedFleet = simulated_fleet(redis_url, procs, beat_interval_s=0.3)
    sim.start()
    procs[0].stalled = True  # registered, then silent: keeps the wait going to the deadline
    time.sleep(0.5)

    def pause_after_push() -> None:
        wait_for(lambda: procs[1].quiet and procs[2].quiet)
        time.sleep(0.5)  # let quiesce see them confirmed
        # Long enough to outlast the wait; it lifts itself, whatever happens to this test.
        raw.client_pause(6000, all=True)

    pauser = threading.Thread(target=pause_after_push, daemon=True)
    pauser.start()
    try:
        code, out, err, took = cli(
            "--redis-url", redis_url, "--read-timeout", "1", "quiet", "--timeout", "4"
        )
    finally:
        pauser.join(timeout=15)
        wait_for(lambda: raw.ping(), timeout=10)  # the pause is over
        sim.stop()
    assert code in (ExitCode.NOT_CONFIRMED, ExitCode.REDIS_UNAVAILABLE), (out, err)
    assert took < 4 + 1 + 3.0  # timeout + one read timeout + start-up and snapshot
    assert "FAILED" in out
    assert "2 confirmed" in out  # what was done before the hang is still reported


# -- configuration mistakes ----------------------------------------------------------
def test_the_same_server_twice_is_refused(redis_url: str, fleet: SimulatedFleet) -> None:
    other = redis_url.replace("127.0.0.1", "localhost").removesuffix("/0")
    code, _, err, _ = cli("--redis-url", f"{redis_url},{other}", "quiet", "--dry-run")
    assert code == ExitCode.USAGE and "same Redis database" in err


def test_filters_that_match_no_live_process_are_a_usage_error(
    redis_url: str, fleet: SimulatedFleet, raw: redis.Redis
) -> None:
    code, out, err, _ = cli("--redis-url", redis_url, "quiet", "--tag", "quiesce-simm")
    assert code == ExitCode.USAGE, (out, err)
    assert "match none of the 4 live processes" in err and "tags: app" in err
    assert raw.keys("*-signals") == [] and raw.keys("quiesce:*") == [] and not raw.keys("*marks")


def test_an_empty_fleet_beside_a_namespaced_one_is_a_wrong_target(
    redis_url: str, raw: redis.Redis
) -> None:
    """Issue 15, Why item 5: this said OK (exit 0) while every old worker kept taking jobs."""
    sim: SimulatedFleet = simulated_fleet(
        redis_url, make_processes(2, seed=31, version="6.4.1"), namespace="myapp"
    )
    with sim:
        code, out, err, _ = cli("--redis-url", redis_url, "quiet", "--release", "v1")
    assert code == ExitCode.USAGE, out + err
    assert "myapp:processes" in err and "--namespace" in err
    assert raw.keys("quiesce:*") == [] and not raw.keys("*marks")


def test_a_database_that_does_not_exist_is_a_usage_error(redis_url: str) -> None:
    code, _, err, _ = cli("--redis-url", redis_url.removesuffix("/0") + "/99", "status")
    assert code == ExitCode.USAGE and "database" in err


def test_a_refused_push_names_its_cause_and_that_nothing_went_out(
    redis_url: str, fleet: SimulatedFleet, raw: redis.Redis
) -> None:
    acl_user(raw, "nopush", "-lpush")
    url = redis_url.replace("redis://", "redis://nopush:pw@")
    with pytest.raises(RedisRefused, match="nothing was signalled"):
        quiet_fleet([store_for(url)], QuietOptions(timeout_s=5))
    assert raw.keys("*-signals") == []


def test_quiet_then_status_expect_quiet_agree_at_once(redis_url: str) -> None:
    """The README's pair: the default `--until delivered` confirms on the beat that popped
    TSTP, one beat before Sidekiq writes quiet = "true"; status must already agree."""
    procs = make_processes(3, seed=37)
    sim: SimulatedFleet = simulated_fleet(redis_url, procs, beat_interval_s=3.0)
    with sim:
        code, out, err, _ = cli("--redis-url", redis_url, "quiet", "--timeout", "15")
        assert code == ExitCode.OK, out + err
        code, out, err, _ = cli("--redis-url", redis_url, "status", "--expect", "quiet")
        assert code == ExitCode.OK, out + err
        assert "quieting" in out  # took TSTP, quiet not reported yet
