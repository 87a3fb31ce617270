"""Simulated fleets that restart like a deploy, and ``quiesce rejoin`` run as a deploy
runs it (a subprocess, waited for): the rejoin and faults tests share them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from quiesce.sim.simulator import SimulatedFleet, SimulatedProcess
from tests.support import simulated_fleet
from tests.support.cli import run

BEAT_S = 0.3
WAIT_LIMIT_S = 60.0
"""Upper bound for anything this file waits for (a failure, never a measurement)."""


def wait_until(what: str, probe: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_LIMIT_S
    while not probe():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


class Fleets:
    """The old fleet and every replacement process, each heartbeating on its own thread."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.fleets: list[SimulatedFleet] = []
        self.counter = 100

    def start(self, processes: list[SimulatedProcess]) -> SimulatedFleet:
        fleet: SimulatedFleet = simulated_fleet(self.url, processes, beat_interval_s=BEAT_S)
        fleet.start()
        self.fleets.append(fleet)
        return fleet

    def replace(self, old: SimulatedProcess, fleet: SimulatedFleet, hostname: str = "") -> str:
        """The old process exits cleanly; a new one (new pid, new nonce) starts."""
        fleet.leave([old])
        host = hostname or old.hostname
        self.counter += 1
        new = SimulatedProcess(
            identity=f"{host}:{self.counter}:n{self.counter:010x}",
            hostname=host,
            pid=self.counter,
            version=old.version,
            tag=old.tag,
        )
        self.start([new])
        return new.identity

    def new(
        self, hostname: str, *, tag: str = "", started_at: float | None = None
    ) -> SimulatedProcess:
        """A new Sidekiq 6.4.1 process (new pid, new nonce) on ``hostname``."""
        self.counter += 1
        process = SimulatedProcess(
            identity=f"{hostname}:{self.counter}:n{self.counter:010x}",
            hostname=hostname,
            pid=self.counter,
            version="6.4.1",
            tag=tag,
            started_at=time.time() if started_at is None else started_at,
        )
        self.start([process])
        return process

    def close(self) -> None:
        for fleet in self.fleets:
            fleet.stop()
            fleet.client.close()


@pytest.fixture
def fleets(redis_url: str) -> Iterator[Fleets]:
    f = Fleets(redis_url)
    yield f
    f.close()


def quiet_fleet_cli(redis_url: str, *extra: str) -> None:
    code, out, err = run("--redis-url", redis_url, "quiet", "--until", "quiet", *extra)
    assert code == 0, out + err


def spawn_rejoin(redis_url: str, *args: str, env: dict[str, str] | None = None) -> Any:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "QUIESCE_", "FLY_"))}
    return subprocess.Popen(
        [sys.executable, "-m", "quiesce", "--redis-url", redis_url, "rejoin", "--wait", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**base, **(env or {})},
    )


def finish_rejoin(proc: Any) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=WAIT_LIMIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"rejoin --wait did not exit\n{out}\n{err}")
    return int(proc.returncode), out, err


def seen_waiting(proc: Any) -> None:
    """The first periodic line: rejoin --wait is running and has judged the fleet once."""
    line = proc.stderr.readline()
    assert line.startswith("rejoin: "), line
