"""``status --json`` and ``quiet --json`` off a terminal: one compact line of JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from quiesce.cli.app import app
from quiesce.sim.simulator import SimulatedFleet, make_processes
from tests.support import simulated_fleet


@pytest.fixture
def fleet(redis_url: str) -> Iterator[SimulatedFleet]:
    sim: SimulatedFleet = simulated_fleet(
        redis_url, make_processes(6, per_machine=2, seed=5, tag="app"), beat_interval_s=0.3
    )
    with sim:
        yield sim


@pytest.mark.parametrize(
    "argv",
    [["status", "--json"], ["status", "--json", "--machines"], ["quiet", "--json", "--dry-run"]],
)
def test_json_is_one_compact_line(redis_url: str, fleet: SimulatedFleet, argv: list[str]) -> None:
    result = CliRunner().invoke(app, ["--redis-url", redis_url, *argv])
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert out.endswith("\n") and out.count("\n") == 1
    data = json.loads(out)
    assert data["version"] == 1 and out.startswith('{"version":1,')
