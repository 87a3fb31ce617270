"""The verdicts against real Sidekiq 6.4.1 processes (``DYNO`` set to a Machine id, the
default tag ``""``) and the local Fly API server: an immediate deploy with one Machine
reverted to the old image, a bluegreen deploy with new Machine ids, and ``recover --tag``
on a Machine two apps share."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner

from quiesce.cli.app import app
from quiesce.errors import ExitCode
from tests.support.fly import FakeFly, fake_fly
from tests.support.machines import Machines, machines
from tests.support.verdicts import APP, OLD_RELEASE, machine_json

__all__ = ["fake_fly", "machines"]  # the fixtures

pytestmark = [pytest.mark.interop, pytest.mark.timeout(240)]

LIST = f"/v1/apps/{APP}/machines"
WAIT_LIMIT_S = 60.0
runner = CliRunner()


@pytest.fixture(autouse=True)
def fly_env(fake_fly: FakeFly, monkeypatch: pytest.MonkeyPatch) -> FakeFly:
    monkeypatch.setenv("FLY_APP_NAME", APP)
    monkeypatch.setenv("FLY_API_HOSTNAME", fake_fly.url)
    monkeypatch.setenv("FLY_API_TOKEN", "FlyV1 fm2_not-shown")
    return fake_fly


def run(redis_url: str, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--redis-url", redis_url, *args])
    return result.exit_code, result.stdout, result.stderr


def _quiet(redis_url: str, *extra: str) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("FLY_API_TOKEN")  # the release command's own Fly lookup is not tested here
        code, out, err = run(redis_url, "quiet", "--until", "quiet", *extra)
    assert code == 0, out + err


def _rejoin(redis_url: str) -> tuple[int, dict[str, Any]]:
    code, out, err = run(redis_url, "rejoin", "--json")
    assert out, err
    return code, json.loads(out)


def _states(report: dict[str, Any]) -> dict[str, str]:
    return {m["machine"]: m["state"] for m in report["machines"]}


def _wait_for(what: str, probe: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_LIMIT_S
    while not probe():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def _settled(redis_url: str) -> bool:
    """No Machine ``starting``: every new Sidekiq has beaten for its 5 s interval."""
    return "starting" not in _states(_rejoin(redis_url)[1]).values()


def test_immediate_deploy_with_one_machine_reverted_is_not_whole_and_names_it(
    machines: Machines, fly_env: FakeFly, redis_url: str
) -> None:
    a, c = "3d8d413b29d089", "3d8d413b29d0cc"
    olds = [machines.boot(a), machines.boot(c)]
    _quiet(redis_url, "--strategy", "immediate")
    for old in olds:
        old.stop()
    machines.boot(a)  # updated: the new image
    machines.boot(c)  # update reverted by Fly: the old image, a fresh Sidekiq
    fly_env.answer("GET", LIST, 200, [machine_json(a), machine_json(c, release=OLD_RELEASE)])
    _wait_for("the new Sidekiqs to beat for an interval", lambda: _settled(redis_url))
    code, report = _rejoin(redis_url)
    assert code == ExitCode.NOT_WHOLE, report
    assert _states(report) == {a: "rejoined", c: "old-image"}
    assert report["not_back"] == [c]
    code, out, _ = run(redis_url, "rejoin")
    assert f"{c}" in out and "old-image" in out and "fleet NOT whole" in out


def test_bluegreen_deploy_with_new_machine_ids_is_whole(
    machines: Machines, fly_env: FakeFly, redis_url: str
) -> None:
    blues = ["b1b1b1b1b1b1b1", "b2b2b2b2b2b2b2"]
    greens = ["e1e1e1e1e1e1e1", "e2e2e2e2e2e2e2"]
    old = [machines.boot(b) for b in blues]
    _quiet(redis_url, "--strategy", "bluegreen")
    for g in greens:
        machines.boot(g)
    fly_env.answer(
        "GET",
        LIST,
        200,
        [machine_json(g) for g in greens]
        + [machine_json(b, state="destroyed", release=OLD_RELEASE) for b in blues],
    )
    for m in old:
        m.stop()  # flyctl stops and destroys the blues last
    _wait_for("the greens to beat for an interval", lambda: _settled(redis_url))
    code, report = _rejoin(redis_url)
    assert code == 0, report
    assert _states(report) == {
        **dict.fromkeys(blues, "replaced"),
        **dict.fromkeys(greens, "new"),
    }
    assert [(g["group"], g["back"], g["expected"]) for g in report["groups"]] == [("worker", 2, 2)]


def test_recover_by_tag_never_restarts_a_machine_another_app_still_works_on(
    machines: Machines, fly_env: FakeFly, redis_url: str
) -> None:
    shared = "5e5e5e5e5e5e5e"
    machines.boot(shared, tag="app1")
    machines.boot(shared, tag="app2")
    _quiet(redis_url, "--tag", "app1")
    fly_env.answer("GET", LIST, 200, [machine_json(shared, release=OLD_RELEASE)])
    fly_env.answer("GET", f"{LIST}/{shared}", 200, machine_json(shared, release=OLD_RELEASE))
    fly_env.answer("POST", f"{LIST}/{shared}/restart", 200, {"ok": True})
    time.sleep(1.1)  # quiet for longer than --after
    code, out, err = run(
        redis_url, "recover", "--tag", "app1", "--after", "1s", "--yes", "--restart"
    )
    assert code == 0, out + err
    assert f"{shared}: it also runs 1 non-quiet process (tag app2); not touched" in out
    assert "nothing to recover" in out
    assert not [r for r in fly_env.requests if r[0] == "POST"]
