"""The deploy-truth cases of issue 15 (Why 1, 2, 3, 4, 5 and 6) end to end: a real
redis-server, simulated Sidekiq processes heartbeating with Fly-style Machine ids, the
real ``quiesce quiet`` writing the deploy record, and a local server answering the Fly
Machines API in its documented shapes (``tests.support.verdicts.machine_json``).

Each test states what the code before the verdicts work did (each was run against it).
New processes are counted once they have kept beating for their version's interval (5 s
for the 6.4.1 processes here), so the tests wait for that, never for a fixed time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from quiesce.errors import ExitCode
from quiesce.sim.simulator import SimulatedFleet, SimulatedProcess, make_processes
from tests.support.cli import run
from tests.support.fly import FakeFly, fake_fly
from tests.support.rejoin import Fleets, wait_until
from tests.support.verdicts import APP, NEW_RELEASE, OLD_RELEASE, machine_json

__all__ = ["fake_fly"]  # the fixture

LIST = f"/v1/apps/{APP}/machines"


@pytest.fixture(autouse=True)
def app_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command knows the app (the deploy history's scope), none has a Fly token."""
    monkeypatch.setenv("FLY_APP_NAME", APP)
    for name in ("FLY_API_TOKEN", "FLY_API_HOSTNAME", "FLY_MACHINE_ID", "FLY_IMAGE_REF"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fly_env(fake_fly: FakeFly, monkeypatch: pytest.MonkeyPatch) -> FakeFly:
    """The Fly API (the fake server) for every command after ``quiet``."""
    monkeypatch.setenv("FLY_API_HOSTNAME", fake_fly.url)
    monkeypatch.setenv("FLY_API_TOKEN", "FlyV1 fm2_not-shown")
    return fake_fly


def _old(count: int, seed: int, **kw: Any) -> list[SimulatedProcess]:
    return make_processes(count, version="6.4.1", seed=seed, tag=kw.pop("tag", ""), **kw)


def _quiet(redis_url: str, *extra: str) -> None:
    # As the release command runs it: FLY_APP_NAME set (the scope), no token needed.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLY_APP_NAME", APP)
        mp.delenv("FLY_API_TOKEN", raising=False)
        code, out, err = run("--redis-url", redis_url, "quiet", "--until", "quiet", *extra)
    assert code == 0, out + err


def _rejoin(redis_url: str, *extra: str) -> tuple[int, dict[str, Any]]:
    code, out, err = run("--redis-url", redis_url, "rejoin", "--json", *extra)
    assert out, err
    return code, json.loads(out)


def _states(report: dict[str, Any]) -> dict[str, str]:
    return {m["machine"]: m["state"] for m in report["machines"]}


def _leave(fleet: SimulatedFleet, *processes: SimulatedProcess) -> None:
    fleet.leave(list(processes))


def _settled(redis_url: str, *extra: str) -> Callable[[], bool]:
    """True once no Machine is ``starting`` (every new process beat for an interval)."""

    def probe() -> bool:
        _, report = _rejoin(redis_url, *extra)
        return not any(s == "starting" for s in _states(report).values())

    return probe


# -- Why 1 -------------------------------------------------------------------------------


def test_a_machine_reverted_to_the_old_release_is_old_image_and_exit_7(
    redis_url: str, fleets: Fleets, fly_env: FakeFly
) -> None:
    """Old code: "3 of 3 back, fleet whole", exit 0, with C on release 63."""
    old = _old(3, seed=11)
    fleet = fleets.start(old)
    _quiet(redis_url, "--strategy", "immediate")
    a, b, c = (p.hostname for p in old)
    fly_env.answer(
        "GET",
        LIST,
        200,
        [machine_json(a), machine_json(b), machine_json(c, release=OLD_RELEASE)],
    )
    _leave(fleet, *old)
    for host in (a, b, c):
        fleets.new(host)  # C: a fresh Sidekiq on the old image, after the quiet
    wait_until("the new processes to keep beating", _settled(redis_url))
    code, report = _rejoin(redis_url)
    assert code == ExitCode.NOT_WHOLE
    assert _states(report) == {a: "rejoined", b: "rejoined", c: "old-image"}
    assert report["not_back"] == [c] and report["whole"] is False
    row = next(m for m in report["machines"] if m["machine"] == c)
    assert row["release_version"] == OLD_RELEASE and "release 63" in row["why"]
    assert report["target"]["release_version"] == NEW_RELEASE
    assert any("newest release Fly lists" in n for n in report["notes"])
    code, out, _ = run("--redis-url", redis_url, "rejoin")
    assert code == ExitCode.NOT_WHOLE and "old-image" in out and c in out


# -- Why 2 -------------------------------------------------------------------------------


def test_bluegreen_with_default_tags_is_whole_and_blues_replaced_everywhere(
    redis_url: str, fleets: Fleets, fly_env: FakeFly
) -> None:
    """Old code: "group -: 0 of 3 back", "group worker: 3 of 0 back", exit 7; the blues
    pending forever in status and the exporter; heartbeats alone "1 pending ... NOT whole"."""
    blues = _old(3, seed=12)  # tag "": Sidekiq's default
    fleet = fleets.start(blues)
    _quiet(redis_url, "--strategy", "bluegreen")
    greens = ["e0000000000001", "e0000000000002", "e0000000000003"]
    for green in greens:
        fleets.new(green)
    # The blues are still quiet (flyctl destroys them last): heartbeats alone.
    wait_until("the greens to keep beating", _settled(redis_url, "--no-fly"))
    code, report = _rejoin(redis_url, "--no-fly")
    assert code == 0, report
    assert sorted(_states(report).values()) == ["new"] * 3 + ["replaced"] * 3
    assert report["grouped_by"] == "tag"
    # Blues destroyed: Fly lists the greens (group worker) and the blues as destroyed.
    fly_env.answer(
        "GET",
        LIST,
        200,
        [machine_json(g) for g in greens]
        + [machine_json(b.hostname, state="destroyed", release=OLD_RELEASE) for b in blues],
    )
    _leave(fleet, *blues)
    code, out, err = run("--redis-url", redis_url, "rejoin")
    assert code == 0, out + err
    assert "group worker: 3 of 3 back, 3 replaced" in out and "fleet whole" in out
    code, out, _ = run("--redis-url", redis_url, "status", "--json")
    counts = json.loads(out)["rejoin"]["counts"]
    assert counts["pending"] == 0 and counts["replaced"] == 3 and counts["new"] == 3


def test_immediate_deploy_that_gave_a_machine_a_new_id_is_whole(
    redis_url: str, fleets: Fleets, fly_env: FakeFly
) -> None:
    """Old code with heartbeats alone: NOT whole, the old id pending."""
    old = _old(2, seed=13)
    fleet = fleets.start(old)
    _quiet(redis_url, "--strategy", "immediate")
    a, b = (p.hostname for p in old)
    fly_env.answer("GET", LIST, 200, [machine_json(a), machine_json("e00000000000ff")])
    _leave(fleet, *old)
    fleets.new(a)
    fleets.new("e00000000000ff")
    wait_until("the new processes to keep beating", _settled(redis_url))
    code, report = _rejoin(redis_url)
    assert code == 0, report
    assert _states(report) == {a: "rejoined", b: "replaced", "e00000000000ff": "new"}


# -- Why 3 and 4: recover ----------------------------------------------------------------


def test_recover_by_tag_leaves_a_shared_machine_alone_and_checks_fly_first(
    redis_url: str, fleets: Fleets, fly_env: FakeFly
) -> None:
    """Old code: restarted E (a live app2 process on it) and the Machine Fly showed
    starting; a 409 had no message of its own."""
    e1 = SimulatedProcess("e00000000000e1:1:aaaa", "e00000000000e1", 1, "6.4.1", tag="app1")
    e2 = SimulatedProcess("e00000000000e1:2:bbbb", "e00000000000e1", 2, "6.4.1", tag="app2")
    f1 = SimulatedProcess("f00000000000f1:1:cccc", "f00000000000f1", 1, "6.4.1", tag="app1")
    g1 = SimulatedProcess("900000000000a1:1:dddd", "900000000000a1", 1, "6.4.1", tag="app1")
    h1 = SimulatedProcess("900000000000b1:1:eeee", "900000000000b1", 1, "6.4.1", tag="app1")
    fleets.start([e1, e2, f1, g1, h1])
    _quiet(redis_url, "--tag", "app1")
    time.sleep(0.2)  # quiet for longer than --after
    machines = [
        machine_json("e00000000000e1", release=OLD_RELEASE),
        machine_json("f00000000000f1", state="starting"),
        machine_json("900000000000a1", release=OLD_RELEASE),
        machine_json("900000000000b1", release=OLD_RELEASE),
    ]
    fly_env.answer("GET", LIST, 200, machines)
    for m in machines:
        fly_env.answer("GET", f"{LIST}/{m['id']}", 200, m)
    fly_env.answer(
        "POST", f"{LIST}/900000000000a1/restart", 409, {"error": "lease currently held by x"}
    )
    fly_env.answer("POST", f"{LIST}/900000000000b1/restart", 200, {"ok": True})

    code, out, _ = run("--redis-url", redis_url, "recover", "--tag", "app1", "--after", "0.1s")
    assert code == 0, out
    assert "stranded 900000000000a1" in out and "stranded 900000000000b1" in out
    assert "e00000000000e1: it also runs 1 non-quiet process (tag app2); not touched" in out
    assert "f00000000000f1: Fly lists it starting" in out

    code, out, err = run(
        "--redis-url",
        redis_url,
        "recover",
        "--tag",
        "app1",
        "--after",
        "0.1s",
        "--yes",
        "--restart",
    )
    assert code == ExitCode.FLY_API, out + err  # the 409: reported, and the rest went on
    assert (
        "900000000000a1: failed: Fly API: Machine 900000000000a1 is leased by someone else" in out
    )
    assert "900000000000b1: restarted" in out
    posts = [r[1] for r in fly_env.requests if r[0] == "POST"]
    assert posts == [f"{LIST}/900000000000a1/restart", f"{LIST}/900000000000b1/restart"]
    assert "fm2_not-shown" not in out + err


def test_recover_reads_the_history_two_failed_deploys_in_a_row(
    redis_url: str, fleets: Fleets
) -> None:
    """Old code: "quiet, but not by the latest recorded deploy; not touched", exit 0, and
    the app1 Machine stays quiet."""
    app1 = _old(1, seed=14, tag="app1")
    app2 = _old(1, seed=24, tag="app2")
    fleets.start([*app1, *app2])
    # Deploy 1 quiets app1's processes and fails; deploy 2 of the same app (one scope)
    # quiets app2's and fails too: the latest record does not name app1's process.
    _quiet(redis_url, "--tag", "app1")
    _quiet(redis_url, "--tag", "app2")
    time.sleep(0.2)
    code, out, _ = run("--redis-url", redis_url, "recover", "--after", "0.1s", "--yes", "--stop")
    assert code == 0, out
    for p in (*app1, *app2):
        assert f"{p.hostname}: stopped (TERM sent)" in out
    assert "not touched" not in out
    wait_until("the processes to take TERM", lambda: all(p.stopped for p in (*app1, *app2)))


# -- Why 5: filters that match nothing ----------------------------------------------------


def test_rejoin_and_recover_filters_that_match_nothing_fail_listing_what_exists(
    redis_url: str, fleets: Fleets
) -> None:
    """Old code: "0 of 0 expected Machines back, fleet whole", exit 0."""
    fleets.start(_old(2, seed=15, tag="app1"))
    _quiet(redis_url)
    for command in ("rejoin", "recover"):
        code, out, err = run("--redis-url", redis_url, command, "--tag", "nosuchtag")
        assert code == ExitCode.USAGE, out + err
        assert "match none of the 2 live processes" in err and "tags: app1" in err


# -- Why 6 -------------------------------------------------------------------------------


def test_a_stopped_machine_is_not_back_unless_stopped_ok(
    redis_url: str, fleets: Fleets, fly_env: FakeFly
) -> None:
    """Old code: the stopped Machine "not-expected", whole, exit 0."""
    old = _old(2, seed=16)
    fleet = fleets.start(old)
    _quiet(redis_url, "--strategy", "immediate")
    a, b = (p.hostname for p in old)
    fly_env.answer("GET", LIST, 200, [machine_json(a), machine_json(b, state="stopped")])
    _leave(fleet, *old)
    fleets.new(a)
    wait_until("the new process to keep beating", _settled(redis_url))
    code, report = _rejoin(redis_url)
    assert code == ExitCode.NOT_WHOLE and _states(report)[b] == "stopped"
    code, report = _rejoin(redis_url, "--stopped-ok")
    assert code == 0 and _states(report)[b] == "not-expected"


def test_a_process_claiming_a_stopped_machine_is_a_conflict(
    redis_url: str, fleets: Fleets, fly_env: FakeFly
) -> None:
    """Old code: the impostor credited to B, whole, exit 0."""
    old = _old(2, seed=17)
    fleet = fleets.start(old)
    _quiet(redis_url, "--strategy", "immediate")
    a, b = (p.hostname for p in old)
    fly_env.answer("GET", LIST, 200, [machine_json(a), machine_json(b, state="stopped")])
    _leave(fleet, *old)
    fleets.new(a)
    fleets.new(b)  # runs elsewhere with DYNO=<b>
    wait_until("the new processes to keep beating", _settled(redis_url))
    code, report = _rejoin(redis_url)
    assert code == ExitCode.NOT_WHOLE
    assert _states(report)[b] == "conflict"
    assert "Fly lists it stopped" in next(m["why"] for m in report["machines"] if m["machine"] == b)


def test_a_process_that_beat_once_and_hung_is_never_back(
    redis_url: str, fleets: Fleets, raw: redis.Redis
) -> None:
    """Old code: rejoined, whole, exit 0, for about 15 s after its only beat."""
    old = _old(1, seed=18)
    fleet = fleets.start(old)
    _quiet(redis_url)
    _leave(fleet, *old)
    once = fleets.new(old[0].hostname)
    wait_until("its first beat", lambda: bool(raw.exists(once.identity)))
    once.stalled = True  # no beat after the first
    code, report = _rejoin(redis_url)
    assert code == ExitCode.NOT_WHOLE
    assert _states(report) == {old[0].hostname: "starting"}


def test_a_process_started_1_7_s_before_the_quiet_is_not_new(
    redis_url: str, fleets: Fleets, raw: redis.Redis
) -> None:
    """Old code: counted as new (2 s of slack), whole, exit 0."""
    old = _old(1, seed=19)
    fleet = fleets.start(old)
    _quiet(redis_url)
    _, report = _rejoin(redis_url)
    quiet_at = float(report["quiet_at"])
    _leave(fleet, *old)
    early = fleets.new(old[0].hostname, started_at=quiet_at - 1.7)
    wait_until("its beats", lambda: bool(raw.exists(early.identity)))
    code, report = _rejoin(redis_url)
    assert code == ExitCode.NOT_WHOLE
    assert _states(report) == {old[0].hostname: "old-running"}


def test_recover_dry_run_lists_each_machines_running_jobs(redis_url: str, fleets: Fleets) -> None:
    old = _old(1, seed=25)
    fleets.start(old)
    old[0].start_job(600, job_class="InvoiceJob", queue="billing")
    _quiet(redis_url)
    time.sleep(0.2)
    code, out, _ = run("--redis-url", redis_url, "recover", "--after", "0.1s")
    assert code == 0, out
    assert f"stranded {old[0].hostname}: 1 quiet process" in out and "1 job running" in out
    assert "    InvoiceJob (billing, " in out
    code, out, _ = run("--redis-url", redis_url, "recover", "--after", "0.1s", "--json")
    (machine,) = json.loads(out)["machines"]
    assert machine["busy"] == 1 and machine["jobs"][0].startswith("InvoiceJob (billing, ")


def test_the_release_commands_fly_target_judges_machines_merely_restarted_on_the_old_release(
    redis_url: str, fleets: Fleets, fly_env: FakeFly, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deploy failed before updating any Machine; they were restarted on release 63.
    Fly's newest release is then 63 itself: only the target the release command recorded
    (its own Machine's release, 64) shows them on the old image. Old code: whole, exit 0."""
    old = _old(2, seed=26)
    fleet = fleets.start(old)
    a, b = (p.hostname for p in old)
    release_machine = "e784079b449483"
    before = [machine_json(a, release=OLD_RELEASE), machine_json(b, release=OLD_RELEASE)]
    fly_env.answer(
        "GET",
        LIST,
        200,
        [*before, machine_json(release_machine, group="fly_app_release_command")],
    )
    fly_env.answer("GET", f"{LIST}/{release_machine}", 200, machine_json(release_machine))
    # The release command, as Fly runs it: its own Machine id and the new image.
    monkeypatch.setenv("FLY_MACHINE_ID", release_machine)
    monkeypatch.setenv("FLY_IMAGE_REF", f"registry.fly.io/{APP}:deployment-{NEW_RELEASE}")
    code, out, err = run("--redis-url", redis_url, "quiet", "--until", "quiet")
    assert code == 0, out + err
    monkeypatch.delenv("FLY_MACHINE_ID")
    monkeypatch.delenv("FLY_IMAGE_REF")
    _leave(fleet, *old)
    fleets.new(a)
    fleets.new(b)
    wait_until("the restarted processes to keep beating", _settled(redis_url))
    code, report = _rejoin(redis_url)
    assert code == ExitCode.NOT_WHOLE, report
    assert report["target"] == {
        "release_version": NEW_RELEASE,
        "image_ref": f"registry.fly.io/{APP}:deployment-{NEW_RELEASE}",
        "source": "record",
    }
    assert _states(report) == {a: "old-image", b: "old-image"}
