"""The deploy ledger against a real redis-server: per-scope history, retried deploys."""

from __future__ import annotations

import redis

from quiesce.model.filters import scope_of
from quiesce.model.ledger import LEDGER_SIZE, quiet_since_any
from quiesce.model.quiet import Outcome
from quiesce.model.record import DeployState
from quiesce.model.report import QuietOptions
from quiesce.model.verdict import Until
from quiesce.runs.quiet import quiet_fleet
from quiesce.runs.read import read_fleet
from quiesce.sidekiq import keys as k
from quiesce.sim.simulator import make_processes
from tests.support.fleets import FleetFactory
from tests.support.stores import store_for


def quiet(url: str, scope: str, **options: object) -> object:
    store = store_for(url)
    try:
        return quiet_fleet([store], QuietOptions(scope=scope, timeout_s=10, **options))  # type: ignore[arg-type]
    finally:
        store.close()


def history(url: str, scope: str | None) -> tuple[object, ...]:
    store = store_for(url)
    try:
        return read_fleet([store], scope=scope).history
    finally:
        store.close()


def test_two_apps_in_one_redis_never_see_each_others_deploys(
    start_fleet: FleetFactory, redis_url: str
) -> None:
    start_fleet(make_processes(2, tag="app1", seed=1) + make_processes(2, tag="app2", seed=2))
    app1, app2 = scope_of("app1", ""), scope_of("app2", "")
    from quiesce.model.filters import Filters

    one = quiet(redis_url, app1, filters=Filters(tags=("app1",)))
    two = quiet(redis_url, app2, filters=Filters(tags=("app2",)))
    seen1 = [r.deploy_id for r in history(redis_url, app1)]  # type: ignore[attr-defined]
    seen2 = [r.deploy_id for r in history(redis_url, app2)]  # type: ignore[attr-defined]
    assert seen1 == [one.deploy_id] and seen2 == [two.deploy_id]  # type: ignore[attr-defined]


def test_a_retried_deploy_with_every_process_quiet_writes_its_record(
    start_fleet: FleetFactory, redis_url: str, raw: redis.Redis
) -> None:
    start_fleet(make_processes(3, seed=3))
    scope = scope_of("app", "")
    first = quiet(redis_url, scope, release="r64", until=Until.QUIET)
    again = quiet(redis_url, scope, release="r65")
    assert first.ok and again.ok and again.deploy_id is not None  # type: ignore[attr-defined]
    records = history(redis_url, scope)
    assert [r.release for r in records] == ["r65", "r64"]  # type: ignore[attr-defined]
    newest = records[0]
    assert newest.state is DeployState.COMPLETE  # type: ignore[attr-defined]
    for identity, entry in newest.outcomes.items():  # type: ignore[attr-defined]
        assert entry.outcome == Outcome.ALREADY_QUIET
        origin, _ = quiet_since_any(records, identity)  # type: ignore[arg-type,misc]
        assert origin.deploy_id == first.deploy_id  # type: ignore[attr-defined]
    assert 0 < raw.ttl(k.Keys().ledger(scope)) <= k.DEPLOY_RECORD_TTL_S


def test_history_keeps_the_newest_twenty(
    start_fleet: FleetFactory, redis_url: str, raw: redis.Redis
) -> None:
    start_fleet(make_processes(1, seed=4))
    scope = scope_of("app", "")
    ids = [quiet(redis_url, scope, release=f"r{i}").deploy_id for i in range(LEDGER_SIZE + 3)]  # type: ignore[attr-defined]
    records = history(redis_url, scope)
    assert [r.deploy_id for r in records] == ids[::-1][:LEDGER_SIZE]  # type: ignore[attr-defined]
    assert raw.hlen(k.Keys().ledger(scope)) == LEDGER_SIZE
