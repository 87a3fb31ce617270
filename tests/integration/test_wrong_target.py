"""The release command refuses a wrong target (issue 15, Why item 5), against a real
redis-server and simulated Sidekiq processes: a fleet under another namespace or in
another database is named, exit 2, nothing written; an empty Redis is a first deploy."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from quiesce.errors import ExitCode
from quiesce.sim.simulator import SimulatedFleet, SimulatedProcess, make_processes
from tests.support import RedisServer, simulated_fleet
from tests.support.cli import run_cli, written

FleetFactory = Callable[..., SimulatedFleet]


@pytest.fixture
def start_fleet(redis_url: str) -> Iterator[FleetFactory]:
    fleets: list[SimulatedFleet] = []

    def start(
        processes: list[SimulatedProcess], *, url: str = redis_url, namespace: str = ""
    ) -> SimulatedFleet:
        fleet: SimulatedFleet = simulated_fleet(
            url, processes, namespace=namespace, beat_interval_s=0.3, seed=1
        )
        fleets.append(fleet.start())
        return fleet

    yield start
    for fleet in fleets:
        fleet.stop()


@pytest.fixture
def admin(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    yield client
    client.close()


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("quiesce: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_a_namespaced_fleet_without_namespace_is_refused(
    start_fleet: FleetFactory, redis_url: str, admin: redis.Redis
) -> None:
    start_fleet(make_processes(3, seed=1), namespace="myapp")
    code, out, err = run_cli("-r", redis_url, "quiet", "--timeout", "5", "--release", "v2")
    assert code == ExitCode.USAGE, out + err
    line = error_line(err)
    assert "myapp:processes" in line and "3 of 3 sampled members beating" in line
    assert written(admin) == []


def test_namespace_given_on_a_plain_fleet_is_refused(
    start_fleet: FleetFactory, redis_url: str, admin: redis.Redis
) -> None:
    start_fleet(make_processes(2, seed=2))
    code, out, err = run_cli("-r", redis_url, "--namespace", "myapp", "quiet", "--timeout", "5")
    assert code == ExitCode.USAGE, out + err
    line = error_line(err)
    assert "no live Sidekiq process in myapp:processes" in line
    assert ": processes (2 of 2 sampled" in line
    assert written(admin) == []


def test_a_fleet_in_another_database_is_refused(
    start_fleet: FleetFactory, redis_url: str, admin: redis.Redis
) -> None:
    start_fleet(make_processes(2, seed=3), url=redis_url.rsplit("/", 1)[0] + "/3")
    code, out, err = run_cli("-r", redis_url, "quiet", "--timeout", "5")
    assert code == ExitCode.USAGE, out + err
    assert "db 3: processes (2 of 2 sampled members beating)" in error_line(err)
    assert written(admin) == []
    code, out, err = run_cli("-r", redis_url, "quiet", "--dry-run")
    assert code == ExitCode.USAGE, out + err  # the dry run says it too


def test_an_empty_redis_is_a_first_deploy(redis_url: str, admin: redis.Redis) -> None:
    code, out, err = run_cli("-r", redis_url, "quiet", "--timeout", "5", "--release", "v1")
    assert code == 0, out + err
    assert "no live Sidekiq processes registered" in out
    keys = written(admin)
    assert keys and all(k.startswith("db0:quiesce:deploy:") for k in keys), keys


def test_a_stale_set_elsewhere_does_not_block_a_deploy(redis_url: str, admin: redis.Redis) -> None:
    admin.sadd("oldapp:processes", "gone:1:abc")  # its heartbeat hash expired long ago
    admin.execute_command("SELECT", 2)
    admin.sadd("processes", "gone:2:abc")
    admin.execute_command("SELECT", 0)
    code, out, err = run_cli("-r", redis_url, "quiet", "--timeout", "5")
    assert code == 0, out + err
    assert "oldapp:processes: is Sidekiq namespaced?" in out


def test_allow_empty_deploys_beside_another_app(
    start_fleet: FleetFactory, redis_url: str, admin: redis.Redis
) -> None:
    start_fleet(make_processes(2, seed=4), namespace="otherapp")
    code, out, err = run_cli("-r", redis_url, "quiet", "--timeout", "5", "--allow-empty")
    assert code == 0, out + err
    assert "otherapp:processes (2 of 2" in out
    assert not [k for k in written(admin) if k.endswith("-signals")]


def test_min_processes_refuses_a_short_fleet(
    start_fleet: FleetFactory, redis_url: str, admin: redis.Redis
) -> None:
    start_fleet(make_processes(2, seed=5))
    code, out, err = run_cli("-r", redis_url, "quiet", "--min-processes", "3", "--timeout", "5")
    assert code == ExitCode.USAGE, out + err
    assert "--min-processes 3: only 2 live processes to quiet" in error_line(err)
    assert written(admin) == []
    code, out, err = run_cli("-r", redis_url, "quiet", "--min-processes", "2", "--timeout", "5")
    assert code == 0, out + err


def test_far_fewer_than_the_last_deploy_is_said_with_both_numbers(
    start_fleet: FleetFactory, redis_url: str
) -> None:
    fleet = start_fleet(make_processes(5, seed=6))
    code, out, err = run_cli("-r", redis_url, "quiet", "--timeout", "5", "--until", "quiet")
    assert code == 0, out + err
    fleet.stop()
    for proc in fleet.processes:
        fleet.client.srem("processes", proc.identity)
        fleet.client.delete(proc.identity)
    start_fleet(make_processes(2, seed=7))
    code, out, err = run_cli("-r", redis_url, "quiet", "--timeout", "5")
    assert code == 0, out + err
    assert "only 2 live processes to quiet" in out + err and "quieted 5" in out + err


def test_status_filters_that_match_nothing_fail(start_fleet: FleetFactory, redis_url: str) -> None:
    start_fleet(make_processes(2, seed=8, tag="app"))
    code, out, err = run_cli("-r", redis_url, "status", "--exclude-tag", "app")
    assert code == ExitCode.USAGE, out + err
    line = error_line(err)
    assert "match none of the 2 live processes" in line and "tags: app" in line


def release_role_url(server: RedisServer) -> str:
    """A user made from the shipped ``quiesce-release`` line (deploy/redis-acl.txt)."""
    acl = Path(__file__).resolve().parents[2] / "deploy" / "redis-acl.txt"
    (line,) = [x for x in acl.read_text().splitlines() if "SETUSER quiesce-release" in x]
    words = [w.replace(">CHANGE-ME", ">pw") for w in shlex.split(line)]
    client = server.client()
    try:
        client.execute_command(*words)
    finally:
        client.close()
    return f"redis://quiesce-release:pw@127.0.0.1:{server.port}/0"


def test_the_shipped_release_role_finds_the_fleet_elsewhere(
    start_fleet: FleetFactory, redis_url: str, redis_server: RedisServer, admin: redis.Redis
) -> None:
    start_fleet(make_processes(2, seed=10), namespace="myapp")
    start_fleet(make_processes(1, seed=11), url=redis_url.rsplit("/", 1)[0] + "/4")
    url = release_role_url(redis_server)
    try:
        code, out, err = run_cli("-r", url, "quiet", "--timeout", "5")
    finally:
        admin.execute_command("ACL", "DELUSER", "quiesce-release")
    assert code == ExitCode.USAGE, out + err
    line = error_line(err)
    assert "myapp:processes (2 of 2" in line and "db 4: processes (1 of 1" in line
    assert written(admin) == []
