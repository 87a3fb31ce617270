"""Two apps sharing one Redis: each app's exporter follows its own deploys (Deploy truth,
Why item 4), not whichever app deployed last, and with no app it says nothing of
another app's deploy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client.registry import CollectorRegistry

from quiesce.adapters.prometheus import QuiesceCollector, make_registry
from quiesce.sim.simulator import SimulatedFleet, make_processes
from tests.support import simulated_fleet
from tests.support.cli import run
from tests.support.stores import store_for


@pytest.fixture
def two_apps(redis_url: str) -> Iterator[SimulatedFleet]:
    processes = make_processes(2, tag="app1", seed=5) + make_processes(2, tag="app2", seed=6)
    with simulated_fleet(redis_url, processes, beat_interval_s=0.3) as fleet:
        yield fleet


def _deploy_releases(registry: CollectorRegistry) -> set[str]:
    return {
        sample.labels["release"]
        for metric in registry.collect()
        if metric.name == "quiesce_deploy_info"
        for sample in metric.samples
    }


def test_each_app_exporter_follows_its_own_deploy(redis_url: str, two_apps: SimulatedFleet) -> None:
    for app in ("app1", "app2"):  # app2 deploys last
        code, out, err = run(
            "-r", redis_url, "quiet", "--tag", app, "--release", f"{app}-r1", "--timeout", "10",
            env={"FLY_APP_NAME": app},
        )  # fmt: skip
        assert code == 0, out + err
    store = store_for(redis_url)
    try:
        for app in ("app1", "app2"):
            registry = make_registry(QuiesceCollector(store, scope=f"app:{app}"))
            assert _deploy_releases(registry) == {f"{app}-r1"}
        # A scope with no deploy of its own reports none (not another app's).
        registry = make_registry(QuiesceCollector(store, scope="app:app3"))
        assert _deploy_releases(registry) == set()
    finally:
        store.close()
