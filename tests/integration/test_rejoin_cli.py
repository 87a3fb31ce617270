"""``quiesce rejoin`` / ``recover`` / ``status`` against a real Redis and simulated Sidekiq.

The fleet is quieted by ``quiesce quiet``; then its processes are replaced one by one
(same hostname, new pid and nonce; or new hostnames for bluegreen) while
``quiesce rejoin --wait`` runs as a subprocess.
"""

from __future__ import annotations

import json
import time

import pytest
import redis

from quiesce.errors import ExitCode
from quiesce.sim.fly import machine_json
from quiesce.sim.simulator import make_processes
from tests.support.cli import run
from tests.support.fly import FakeFly, fake_fly
from tests.support.rejoin import (
    Fleets,
    finish_rejoin,
    quiet_fleet_cli,
    seen_waiting,
    spawn_rejoin,
    wait_until,
)

__all__ = ["fake_fly"]  # the fixture, re-used from the Fly client tests


def test_immediate_rejoin_wait_exits_0_when_the_last_machine_is_back(
    redis_url: str, fleets: Fleets, raw: redis.Redis
) -> None:
    old = make_processes(3, version="6.4.1", seed=1)
    fleet = fleets.start(old)
    quiet_fleet_cli(redis_url, "--strategy", "immediate")

    code, out, _ = run("--redis-url", redis_url, "rejoin", "--json")
    assert code == ExitCode.NOT_WHOLE
    report = json.loads(out)
    assert report["counts"]["quiet-idle"] == 3 and report["with_fly"] is False

    waiting = spawn_rejoin(redis_url, "--timeout", "50s", "--interval", "0.1")
    seen_waiting(waiting)
    for process in old:
        fleets.replace(process, fleet)
    code, out, err = finish_rejoin(waiting)
    assert code == 0, out + err
    assert "3 of 3 expected Machines back" in out and "fleet whole" in out
    assert "not verified" in out
    assert "longest pause" in out


def test_rejoin_wait_names_the_machine_never_back_at_the_timeout(
    redis_url: str, fleets: Fleets
) -> None:
    old = make_processes(3, seed=2)
    fleet = fleets.start(old)
    quiet_fleet_cli(redis_url)
    waiting = spawn_rejoin(redis_url, "--timeout", "3s", "--interval", "0.1")
    seen_waiting(waiting)
    for process in old[:2]:
        fleets.replace(process, fleet)
    code, out, err = finish_rejoin(waiting)
    assert code == ExitCode.NOT_WHOLE, out + err
    assert old[2].hostname in out and "fleet NOT whole" in out
    line = next(li for li in out.splitlines() if old[2].hostname in li)
    assert "missing" in line


def test_bluegreen_new_hostnames_and_the_fly_list(
    redis_url: str, fleets: Fleets, fake_fly: FakeFly
) -> None:
    old = make_processes(2, seed=3)
    fleet = fleets.start(old)
    quiet_fleet_cli(redis_url, "--strategy", "bluegreen", "--app", "my-app")
    greens = ["e0000000000001", "e0000000000002"]
    fake_fly.answer(
        "GET", "/v1/apps/my-app/machines", 200, [machine_json(m) for m in greens]
    )  # the blue Machines are already destroyed: Fly no longer lists them
    env = {
        "FLY_API_HOSTNAME": fake_fly.url,
        "FLY_APP_NAME": "my-app",
        "FLY_API_TOKEN": "FlyV1 fm2_not-shown",
    }
    waiting = spawn_rejoin(redis_url, "--timeout", "50s", "--interval", "0.1", env=env)
    seen_waiting(waiting)
    for process, green in zip(old, greens, strict=True):
        fleets.replace(process, fleet, hostname=green)
    code, out, err = finish_rejoin(waiting)
    assert code == 0, out + err
    assert "group worker: 2 of 2 back" in out
    assert "fm2_not-shown" not in out + err
    assert all(r[1].startswith("/v1/apps/my-app/machines") for r in fake_fly.requests)


def test_status_shows_rejoin_state_per_machine(redis_url: str, fleets: Fleets) -> None:
    old = make_processes(2, version="6.4.1", seed=4)
    fleet = fleets.start(old)
    quiet_fleet_cli(redis_url)
    fleets.replace(old[0], fleet)
    code, out, _ = run("--redis-url", redis_url, "status")
    assert code == 0
    # Counted once it has kept beating for its version's interval (5 s for 6.4.1).
    assert any(old[0].hostname in li and "starting" in li for li in out.splitlines()), out
    wait_until(
        "the new process to have kept beating",
        lambda: (
            "rejoin: 1 of 2 expected Machines back" in run("--redis-url", redis_url, "status")[1]
        ),
    )
    code, out, _ = run("--redis-url", redis_url, "status")
    assert any(old[1].hostname in li and "quiet-idle" in li for li in out.splitlines())
    code, out, _ = run("--redis-url", redis_url, "status", "--json")
    assert json.loads(out)["rejoin"]["back"] == 1


def test_rejoin_without_a_deploy_record_is_a_usage_error(redis_url: str, fleets: Fleets) -> None:
    fleets.start(make_processes(1, seed=5))
    code, _, err = run("--redis-url", redis_url, "rejoin")
    assert code == ExitCode.USAGE and "no quiesce deploy record" in err


def test_recover_dry_run_then_stop_through_the_signal_list(
    redis_url: str, fleets: Fleets, raw: redis.Redis
) -> None:
    old = make_processes(3, seed=6)
    fleet = fleets.start(old)
    quiet_fleet_cli(redis_url)
    fleets.replace(old[0], fleet)  # came back: not a candidate
    time.sleep(0.2)  # quiet for longer than --after (0.1 s)

    code, out, _ = run("--redis-url", redis_url, "recover", "--after", "0.1s")
    assert code == 0
    assert f"would stop {old[1].hostname}" not in out  # no action chosen: just stranded
    assert f"stranded {old[1].hostname}" in out and old[0].hostname not in out
    assert "dry run" in out
    signals_before = {p.identity: list(p.signals_seen) for p in old}

    code, out, _ = run("--redis-url", redis_url, "recover", "--after", "0.1s", "--yes", "--stop")
    assert code == 0, out
    assert f"{old[1].hostname}: stopped (TERM sent)" in out
    wait_until(
        "the stranded processes to take TERM and leave", lambda: old[1].stopped and old[2].stopped
    )
    assert old[1].signals_seen[len(signals_before[old[1].identity]) :] == ["TERM"]
    assert "TERM" not in old[0].signals_seen


def test_recover_restart_through_the_fly_api(
    redis_url: str, fleets: Fleets, fake_fly: FakeFly, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = make_processes(2, seed=7)
    fleets.start(old)
    quiet_fleet_cli(redis_url, "--app", "my-app")
    time.sleep(0.2)
    listed = old[0].hostname  # the other one is not a Machine of this app
    fake_fly.answer("GET", "/v1/apps/my-app/machines", 200, [machine_json(listed)])
    fake_fly.answer("GET", f"/v1/apps/my-app/machines/{listed}", 200, machine_json(listed))
    fake_fly.answer("POST", f"/v1/apps/my-app/machines/{listed}/restart", 200, {"ok": True})
    code, _, err = run("--redis-url", redis_url, "recover", "--after", "0.1s", "--yes", "--restart")
    assert code == ExitCode.USAGE and "needs the Fly API" in err

    monkeypatch.setenv("FLY_API_HOSTNAME", fake_fly.url)
    monkeypatch.setenv("FLY_APP_NAME", "my-app")
    monkeypatch.setenv("FLY_API_TOKEN", "tok")
    code, out, _ = run("--redis-url", redis_url, "recover", "--after", "0.1s", "--yes", "--restart")
    assert code == 0, out
    assert f"{listed}: restarted" in out
    # Fly's view is read first: the other is skipped, and said.
    assert f"{old[1].hostname}: Fly does not list it (not a Machine of this app)" in out
    posts = [r[1] for r in fake_fly.requests if r[0] == "POST"]
    assert posts == [f"/v1/apps/my-app/machines/{listed}/restart"]
