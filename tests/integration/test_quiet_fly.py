"""What ``quiet`` learns from Fly and records (issue 15, What to build item 2), against a
real redis-server, with the Fly API answered by ``httpx.MockTransport`` in the documented
shapes. Fly failing never fails the quiet: the record says ``fly_checked: false``."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from quiesce.adapters.fly import FlyClient, FlyConfig
from quiesce.adapters.redis.store import SidekiqStore
from quiesce.model.filters import scope_of
from quiesce.model.record import DeployRecord
from quiesce.model.record_entries import MachineEntry
from quiesce.model.report import QuietOptions, QuietReport
from quiesce.runs.quiet import quiet_fleet
from quiesce.runs.read import read_fleet
from quiesce.settings import build_settings
from quiesce.sim.simulator import SimulatedFleet, make_processes
from tests.support import simulated_fleet
from tests.support.fly_shapes import IMAGE_NEW, IMAGE_OLD, machine_json

APP = "my-app"
RELEASE_MACHINE = "e784079b449483"
SCOPE = scope_of(APP, "")


@pytest.fixture
def fleet(redis_url: str) -> Iterator[SimulatedFleet]:
    sim: SimulatedFleet = simulated_fleet(
        redis_url, make_processes(2, seed=11), beat_interval_s=0.3, seed=1
    )
    with sim:
        yield sim


def fly_client(handler: Callable[[httpx.Request], httpx.Response]) -> FlyClient:
    config = FlyConfig(app=APP, token="FlyV1 fm2_test-token", base_url="http://fly.test")
    return FlyClient(config, transport=httpx.MockTransport(handler), attempts=2)


def documented(request: httpx.Request) -> httpx.Response:
    if request.url.path == f"/v1/apps/{APP}/machines":
        machines = [
            machine_json("0801d33c5e6e87"),
            machine_json("148ed193b95e89", state="stopped", image_ref=False),
            machine_json("3d8d413b29d089", group="web"),
            machine_json(RELEASE_MACHINE, group="fly_app_release_command", image=IMAGE_NEW),
        ]
        return httpx.Response(200, json=machines)
    if request.url.path == f"/v1/apps/{APP}/machines/{RELEASE_MACHINE}":
        own = machine_json(
            RELEASE_MACHINE, group="fly_app_release_command", image=IMAGE_NEW, release="64"
        )
        return httpx.Response(200, json=own)
    return httpx.Response(404, json={"error": "not found"})


def quiet(url: str, fly: Any, **options: Any) -> tuple[QuietReport, DeployRecord]:
    options.setdefault("timeout_s", 10)
    settings = build_settings(urls=[url], environ={})
    store = SidekiqStore(settings.redis[0], settings)
    try:
        report = quiet_fleet(
            [store],
            QuietOptions(
                scope=SCOPE,
                fly_app=APP,
                image_ref=IMAGE_NEW,
                release_machine=RELEASE_MACHINE,
                **options,
            ),
            fly=fly,
        )
        record = read_fleet([store], scope=SCOPE).latest_deploy
    finally:
        store.close()
    assert record is not None and record.deploy_id == report.deploy_id
    return report, record


def test_the_machine_list_and_the_target_release_are_recorded(
    fleet: SimulatedFleet, redis_url: str
) -> None:
    report, record = quiet(redis_url, fly_client(documented))
    assert report.ok and record.fly_checked and record.scope == SCOPE
    assert record.target is not None
    assert (record.target.app, record.target.image_ref) == (APP, IMAGE_NEW)
    assert record.target.release_version == "64"
    assert record.target.release_machine == RELEASE_MACHINE
    assert record.machines == {  # the release Machine is not the app's fleet
        "0801d33c5e6e87": MachineEntry("0801d33c5e6e87", "worker", IMAGE_OLD, "63", "started"),
        "148ed193b95e89": MachineEntry("148ed193b95e89", "worker", IMAGE_OLD, "63", "stopped"),
        "3d8d413b29d089": MachineEntry("3d8d413b29d089", "web", IMAGE_OLD, "63", "started"),
    }


@pytest.mark.parametrize(
    ("status", "needle"),
    [
        (401, "refused the token (401"),
        (429, "rate limit"),
        (503, "error 503"),
    ],
)
def test_fly_failing_never_fails_the_quiet(
    fleet: SimulatedFleet, redis_url: str, status: int, needle: str
) -> None:
    def failing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": "nope"}, headers={"retry-after": "0"})

    report, record = quiet(redis_url, fly_client(failing))
    assert report.ok and report.exit_code == 0
    assert not record.fly_checked and record.machines == {}
    assert record.target is not None and record.target.image_ref == IMAGE_NEW
    assert record.target.release_version is None
    said = [n for n in report.notes if n.startswith("Fly not checked")]
    assert len(said) == 1 and needle in said[0], report.notes
    assert "fm2_test-token" not in " ".join(report.notes)


def test_fly_unreachable_never_fails_the_quiet(fleet: SimulatedFleet, redis_url: str) -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    report, record = quiet(redis_url, fly_client(unreachable))
    assert report.ok and not record.fly_checked
    assert any("cannot reach the Fly API" in n for n in report.notes), report.notes


def test_without_a_token_it_is_said_once(fleet: SimulatedFleet, redis_url: str) -> None:
    report, record = quiet(redis_url, None, fly_missing="no FLY_API_TOKEN")
    assert report.ok and not record.fly_checked
    said = [n for n in report.notes if "Fly not checked" in n]
    assert said == [
        "Fly not checked (no FLY_API_TOKEN): the deploy record has no Machine list, so "
        "rejoin cannot verify images (give the release command FLY_API_TOKEN)"
    ]
    assert record.target is not None and record.target.app == APP


def test_the_release_machine_unreadable_keeps_the_list(
    fleet: SimulatedFleet, redis_url: str
) -> None:
    def no_release_machine(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(RELEASE_MACHINE):
            return httpx.Response(404, json={"error": "machine not found"})
        return documented(request)

    report, record = quiet(redis_url, fly_client(no_release_machine))
    assert report.ok and record.fly_checked and len(record.machines) == 3
    assert record.target is not None and record.target.release_version is None
    assert any(n.startswith("target release not recorded") for n in report.notes)


def test_a_hung_fly_api_takes_no_time_from_the_wait(fleet: SimulatedFleet, redis_url: str) -> None:
    """The Machine list is read beside the wait: a Fly API that never answers in time
    costs the confirmations nothing, and the record says Fly was not checked."""
    release = threading.Event()

    def hung(request: httpx.Request) -> httpx.Response:
        release.wait(30)
        return documented(request)

    try:
        report, record = quiet(redis_url, fly_client(hung), timeout_s=3)
    finally:
        release.set()
    assert report.ok and {e.outcome.value for e in report.entries} == {"confirmed"}
    assert not record.fly_checked
    assert "Fly not checked: no answer from the Fly API by the deadline" in report.notes
