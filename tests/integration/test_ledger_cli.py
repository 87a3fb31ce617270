"""The deploy ledger through the CLI, against a real redis-server (issue 15, Why item 4).
Only the CLI and the simulator are imported at module level, so this module also runs
against the code before the ledger (where each of these tests fails)."""

from __future__ import annotations

import json

from quiesce.adapters.redis.store import SidekiqStore
from quiesce.errors import ExitCode
from quiesce.runs.read import read_fleet
from quiesce.settings import build_settings
from quiesce.sim.simulator import make_processes
from tests.support.cli import run
from tests.support.fleets import FleetFactory


def latest_release(url: str, app: str) -> str | None:
    code, out, err = run("-r", url, "status", "--json", env={"FLY_APP_NAME": app})
    assert code == 0, out + err
    deploy = json.loads(out)["latest_deploy"]
    return deploy["release"] if deploy else None


def test_two_apps_sharing_a_redis_each_read_their_own_deploy(
    start_fleet: FleetFactory, redis_url: str
) -> None:
    """Why item 4: one ``quiesce:deploy:latest`` served the whole Redis."""
    start_fleet(make_processes(2, tag="app1", seed=5) + make_processes(2, tag="app2", seed=6))
    for app in ("app1", "app2"):
        code, out, err = run(
            "-r", redis_url, "quiet", "--tag", app, "--release", f"{app}-r1", "--timeout", "10",
            env={"FLY_APP_NAME": app},
        )  # fmt: skip
        assert code == 0, out + err
    assert latest_release(redis_url, "app1") == "app1-r1"
    assert latest_release(redis_url, "app2") == "app2-r1"
    assert latest_release(redis_url, "app3") is None


def test_a_retried_deploy_is_what_later_commands_judge_by(
    start_fleet: FleetFactory, redis_url: str
) -> None:
    """Why item 4: the retry printed OK but wrote no record, so release 65 was judged
    against release 64's record."""
    start_fleet(make_processes(3, seed=7))
    env = {"FLY_APP_NAME": "app"}
    args = ("-r", redis_url, "quiet", "--timeout", "10", "--until", "quiet")
    assert run(*args, "--release", "r64", env=env)[0] == 0
    code, out, err = run(*args, "--release", "r65", env=env)
    assert code == 0 and "3 already_quiet" in out, out + err
    assert latest_release(redis_url, "app") == "r65"


def test_two_failed_deploys_in_a_row_stay_in_the_history(
    start_fleet: FleetFactory, redis_url: str
) -> None:
    """Why item 4: the second failed deploy hid the first, whose processes stayed quiet."""
    start_fleet(make_processes(2, seed=8), beat=None)  # 10 s beats: a 1 s wait fails
    env = {"FLY_APP_NAME": "app"}
    for release in ("r1", "r2"):
        code, out, err = run(
            "-r", redis_url, "quiet", "--timeout", "1", "--release", release, env=env
        )
        assert code == ExitCode.NOT_CONFIRMED, out + err
    from quiesce.model.filters import scope_of
    from quiesce.model.record import DeployState

    settings = build_settings(urls=[redis_url], environ={})
    store = SidekiqStore(settings.redis[0], settings)
    try:
        records = read_fleet([store], scope=scope_of("app", "")).history
    finally:
        store.close()
    assert [(r.release, r.state) for r in records] == [
        ("r2", DeployState.FAILED),
        ("r1", DeployState.FAILED),
    ]


def test_status_without_the_app_says_whose_the_newest_deploy_is(
    start_fleet: FleetFactory, redis_url: str
) -> None:
    start_fleet(make_processes(2, seed=9))
    env = {"FLY_APP_NAME": "my-app"}
    assert run("-r", redis_url, "quiet", "--timeout", "10", env=env)[0] == 0
    code, out, err = run("-r", redis_url, "status")
    assert code == 0, out + err
    assert (
        "note: no deploy recorded for redis-ns:; the newest deploy in this Redis is of "
        "app:my-app (--app my-app)"
    ) in out
    code, out, err = run("-r", redis_url, "status", "--app", "my-app")
    assert code == 0 and "latest deploy:" in out and "no deploy recorded" not in out, out
