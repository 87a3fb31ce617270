"""The optional Postgres reader against a real PostgreSQL (127.0.0.1:5432, as this kind of
machine runs one): a database the test creates and drops, clients with an
application_name, read by the exporter and by the bluegreen preflight."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from quiesce.adapters.postgres import PostgresReader
from quiesce.adapters.prometheus import QuiesceCollector
from quiesce.adapters.redis.store import SidekiqStore
from quiesce.errors import PostgresUnavailable
from quiesce.settings import build_settings
from quiesce.sim.simulator import make_processes
from tests.support import free_port, simulated_fleet

psycopg = pytest.importorskip("psycopg", reason="the postgres extra (psycopg 3) is not installed")

ADMIN_URL = os.environ.get("QUIESCE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin() -> Any:
    try:
        return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        pytest.skip(f"no PostgreSQL at {ADMIN_URL} ({' '.join(str(exc).split())[:120]})")


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh database for this test, dropped afterwards (with its connections)."""
    admin = _admin()
    name = f"quiesce_test_{secrets.token_hex(4)}"
    admin.execute(f'create database "{name}"')
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin.execute(f'drop database "{name}" with (force)')
        admin.close()


@pytest.fixture
def app_connections(database: str) -> Iterator[list[Any]]:
    conns = [psycopg.connect(database, application_name="sidekiq-test") for _ in range(3)]
    yield conns
    for conn in conns:
        conn.close()


def test_reader_counts_backends_by_application_name(
    database: str, app_connections: list[Any]
) -> None:
    reader = PostgresReader(database)
    stats = reader.read()
    assert stats.backends["sidekiq-test"] == 3
    assert "quiesce" not in stats.backends  # our own connection is left out
    assert stats.max_connections > 0 and 0 <= stats.reserved < stats.max_connections
    app_connections[0].close()
    assert reader.read().backends["sidekiq-test"] == 2  # the same connection, read again
    reader.close()


def test_reader_failure_is_one_error_then_recovers(database: str) -> None:
    reader = PostgresReader(f"postgresql://postgres@127.0.0.1:{free_port()}/x", timeout_s=1)
    with pytest.raises(PostgresUnavailable, match="cannot read PostgreSQL"):
        reader.read()
    good = PostgresReader(database)
    assert good.read().max_connections > 0
    good.close()


def test_exporter_exports_postgres(
    redis_url: str, raw: redis.Redis, database: str, app_connections: list[Any]
) -> None:
    procs = make_processes(1, version="8.1.7", seed=21)
    sim = simulated_fleet(redis_url, procs)
    sim.beat(procs, time.time())
    settings = build_settings(urls=[redis_url])
    store = SidekiqStore(settings.redis[0], settings)
    reader = PostgresReader(database)
    collector = QuiesceCollector(store, postgres=reader)
    families = {f.name: f for f in collector.collect()}
    samples = {s.name: s for f in families.values() for s in f.samples if not s.labels}
    backends = {
        s.labels["application_name"]: s.value for s in families["quiesce_postgres_backends"].samples
    }
    assert samples["quiesce_postgres_up"].value == 1
    assert backends["sidekiq-test"] == 3
    assert samples["quiesce_postgres_max_connections"].value > 0
    total = sum(backends.values())
    assert samples["quiesce_postgres_projected_peak_backends"].value == 2 * total
    down = QuiesceCollector(
        store, postgres=PostgresReader(f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    )
    samples = {s.name: s for f in down.collect() for s in f.samples if not s.labels}
    assert samples["quiesce_postgres_up"].value == 0
    assert samples["quiesce_up"].value == 1  # Redis is fine: Postgres is reported apart
    reader.close()
    store.close()
    sim.client.close()


def test_bluegreen_preflight_reads_postgres(
    redis_url: str, database: str, app_connections: list[Any]
) -> None:
    from typer.testing import CliRunner

    from quiesce.cli.app import app

    procs = make_processes(1, version="8.1.7", seed=22)
    sim = simulated_fleet(redis_url, procs)
    sim.beat(procs, time.time())
    result = CliRunner().invoke(
        app,
        ["quiet", "-r", redis_url, "--strategy", "bluegreen", "--dry-run"],
        env={"QUIESCE_POSTGRES_URL": database},
    )
    assert result.exit_code == 0, result.stderr
    line = next(x for x in result.stderr.splitlines() if "preflight: postgres" in x)
    assert "(every client backend again)" in line
    sim.client.close()
