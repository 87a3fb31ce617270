"""The bluegreen preflight: pool arithmetic (pure) and ``quiet --strategy bluegreen`` refusing
before any push when the projected peak passes ``--max-connections-ratio``."""

from __future__ import annotations

import time

import pytest
import redis
from typer.testing import CliRunner

from quiesce.cli.app import app
from quiesce.errors import ConnectionLimit, ExitCode
from quiesce.model.capacity import (
    PostgresStats,
    clients_by_library,
    pool_overhead,
    pool_size,
    project_postgres,
    project_redis,
    refusals,
)
from quiesce.model.fleet import ProcessRecord, ServerInfo, SidekiqVersion
from quiesce.model.preflight import BlueGreenPreflight, projections
from quiesce.model.snapshot import FleetSnapshot
from quiesce.sidekiq import keys as k
from quiesce.sim.simulator import make_processes
from tests.support import RedisServer, simulated_fleet


def proc(version: str | None, concurrency: int | None = 5, *, alive: bool = True) -> ProcessRecord:
    v = SidekiqVersion(version, False, 10.0) if version else None
    return ProcessRecord(
        f"h:1:{version}", "h", 1, alive, version=v, concurrency=concurrency, redis="r"
    )


def test_pool_overhead_by_version() -> None:
    assert pool_overhead(proc("6.4.1")) == 5  # one pool of concurrency + 5
    assert pool_overhead(proc("7.1.0")) == 5  # internal pool of 5
    assert pool_overhead(proc("7.1.1")) == 10  # internal pool of 10 from 7.1.1
    assert pool_overhead(proc("8.1.7")) == 10
    assert pool_overhead(proc("6.2-7.0.1")) == 5  # an inferred range reads as its start
    assert pool_overhead(proc(None)) == 10
    assert pool_size(proc("8.1.7", 25)) == 35
    assert pool_size(proc("8.1.7", None)) == 15  # Sidekiq's default concurrency 5


def test_projection_counts_live_sidekiq_pools_again() -> None:
    fleet = [proc("8.1.7", 10), proc("6.4.1", 20), proc("8.1.7", 50, alive=False)]
    p = project_redis("r", 100, 200, fleet)
    assert (p.current, p.added, p.peak, p.limit) == (100, 20 + 25, 145, 200)
    assert p.ratio == pytest.approx(0.725)
    assert not p.exceeds(0.8) and p.exceeds(0.7)
    assert "100 now + 45" in p.describe() and "= 145 at the peak, limit 200" in p.describe()
    pg = project_postgres(60, 100)
    assert pg.peak == 120 and refusals([p, pg], 0.9) == [pg]
    assert not project_redis("r", 5, None, fleet).exceeds(0.1)  # unknown limit: never refused


def test_projections_include_postgres_less_reserved() -> None:
    snapshot = FleetSnapshot((proc("8.1.7", 5),), 0.0, (ServerInfo("r", 10, 100),))
    stats = PostgresStats({"web": 30, "sidekiq": 10}, max_connections=103, reserved=3)
    found = projections(snapshot, stats)
    assert [(p.resource, p.peak, p.limit) for p in found] == [
        ("redis r", 25, 100),
        ("postgres", 80, 100),
    ]
    lines: list[str] = []
    hook = BlueGreenPreflight(max_ratio=0.75, echo=lines.append, read_postgres=lambda: stats)
    with pytest.raises(ConnectionLimit, match="postgres 80/100"):
        hook(snapshot)
    assert len(lines) == 2 and lines[1].startswith("bluegreen preflight: postgres: 40 now")


def test_clients_by_library_is_bounded() -> None:
    lines = [
        "id=1 addr=127.0.0.1:1 name= lib-name=redis-client(sidekiq_v8.1.5) lib-ver=0.29.0",
        "id=2 addr=127.0.0.1:2 name=Sidekiq-server-PID-12 lib-name= lib-ver=",
        "id=3 addr=127.0.0.1:3 name=whatever",
        *(f"id={i} addr=x lib-name=lib{i}" for i in range(10, 40)),
    ]
    counts = clients_by_library("\n".join(lines), limit=5)
    assert len(counts) == 5 and sum(counts.values()) == 33
    assert counts["other"] == 33 - 4
    small = clients_by_library("\n".join(lines[:3]))
    assert small == {"redis-client(sidekiq_v8.1.5)": 1, "sidekiq": 1, "unknown": 1}


# -- the release command ------------------------------------------------------------------
def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def signal_keys(client: redis.Redis) -> list[str]:
    return [str(key) for key in client.scan_iter(match="*-signals")]


def test_bluegreen_preflight_refuses_before_any_push() -> None:
    with RedisServer("--maxclients", "100") as server:
        procs = make_processes(4, version="8.1.7", seed=11)
        sim = simulated_fleet(server.url, procs)
        sim.beat(procs, time.time())
        client = server.client(decode_responses=True)
        # 4 processes x (5 threads + 10) = 60 more on top of today's clients: over 50%.
        code, _, err = run(
            "quiet", "-r", server.url, "--strategy", "bluegreen", "--max-connections-ratio",
            "0.5", "--no-wait",
        )  # fmt: skip
        assert code == int(ExitCode.CONNECTION_LIMIT), err
        assert int(ExitCode.CONNECTION_LIMIT) == 9
        assert "bluegreen preflight: redis redis://127.0.0.1:" in err
        assert "+ 60 (4 Sidekiq processes' pools again)" in err
        assert "nothing was signalled" in err
        assert signal_keys(client) == []
        assert client.get(k.Keys().latest_deploy) is None
        # Within the ratio: printed, then the deploy goes on.
        code, _, err = run(
            "quiet", "-r", server.url, "--strategy", "bluegreen", "--max-connections-ratio",
            "0.95", "--no-wait",
        )  # fmt: skip
        assert code == 0, err
        assert "bluegreen preflight: redis" in err
        assert len(signal_keys(client)) == 4
        client.close()
        sim.client.close()


def test_ratio_needs_bluegreen_and_other_strategies_print_nothing(redis_url: str) -> None:
    code, _, err = run("quiet", "-r", redis_url, "--max-connections-ratio", "0.5")
    assert code == 2 and "needs --strategy bluegreen" in err
    procs = make_processes(1, version="8.1.7", seed=12)
    sim = simulated_fleet(redis_url, procs)
    sim.beat(procs, time.time())
    code, _, err = run("quiet", "-r", redis_url, "--strategy", "rolling", "--no-wait")
    assert code == 0 and "preflight" not in err
    sim.client.close()


def test_unreadable_postgres_refuses_only_when_a_ratio_is_asked() -> None:
    from quiesce.errors import PostgresUnavailable

    def broken() -> PostgresStats:
        raise PostgresUnavailable("cannot read PostgreSQL (postgresql://x): refused")

    snapshot = FleetSnapshot((proc("8.1.7", 5),), 0.0, (ServerInfo("r", 10, 100),))
    lines: list[str] = []
    BlueGreenPreflight(max_ratio=None, echo=lines.append, read_postgres=broken)(snapshot)
    assert any("PostgreSQL not projected" in line for line in lines)
    with pytest.raises(ConnectionLimit, match="nothing was signalled"):
        BlueGreenPreflight(max_ratio=0.9, echo=lines.append, read_postgres=broken)(snapshot)
