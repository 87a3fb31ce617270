"""Simulated fleets a test starts and the fixture stops: ``start_fleet(processes)``."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from quiesce.sim.simulator import SimulatedFleet, SimulatedProcess
from tests.support import simulated_fleet

FleetFactory = Callable[..., SimulatedFleet]


@pytest.fixture
def start_fleet(redis_url: str) -> Iterator[FleetFactory]:
    fleets: list[SimulatedFleet] = []

    def start(processes: list[SimulatedProcess], beat: float | None = 0.3) -> SimulatedFleet:
        fleet: SimulatedFleet = simulated_fleet(redis_url, processes, beat_interval_s=beat, seed=1)
        fleets.append(fleet.start())
        return fleet

    yield start
    for fleet in fleets:
        fleet.stop()
