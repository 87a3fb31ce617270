"""Every quiet that exits 0 leaves its record in its scope's history; one that refuses
(exit 2) writes nothing (hypothesis, against a real redis-server: generated fleets
written straight into Redis as heartbeats would, generated filters and options)."""

from __future__ import annotations

import contextlib
import dataclasses
import time

import redis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from quiesce.adapters.redis.store import SidekiqStore
from quiesce.errors import ConfigError
from quiesce.model.filters import Filters, scope_of
from quiesce.model.record import parse_deploy_record
from quiesce.model.report import QuietOptions
from quiesce.model.verdict import Until
from quiesce.runs.quiet import quiet_fleet
from quiesce.settings import build_settings
from quiesce.sidekiq.keys import Keys
from quiesce.sim.simulator import make_processes
from tests.support import RedisServer

processes = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),  # tag
        st.booleans(),  # quiet already
        st.booleans(),  # heartbeat hash expired (a dead member)
        st.booleans(),  # embedded (Sidekiq ignores signals there)
    ),
    max_size=6,
)
options = st.fixed_dictionaries(
    {
        "app": st.sampled_from([None, "app1", "app2"]),
        "tags": st.sampled_from([(), ("a",), ("b",), ("a", "b"), ("c",)]),
        "wait": st.booleans(),
        "min_processes": st.sampled_from([None, 0, 2]),
        "previous": st.booleans(),
    }
)


def register(client: redis.Redis, fleet: list[tuple[str, bool, bool, bool]], seed: int) -> None:
    now = time.time()
    procs = make_processes(len(fleet), seed=seed, version="7.3.10")
    for proc, (tag, quiet, dead, embedded) in zip(procs, fleet, strict=True):
        proc = dataclasses.replace(proc, tag=tag, quiet=quiet, embedded=embedded)
        client.sadd("processes", proc.identity)
        if not dead:
            client.hset(proc.identity, mapping=proc.fields(now))  # type: ignore[arg-type]
            client.expire(proc.identity, 60)


def own_keys(client: redis.Redis) -> list[str]:
    return sorted(str(k) for k in client.scan_iter(match="quiesce:*"))


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(processes, options, st.integers(0, 1000))
def test_every_quiet_that_exits_0_leaves_its_record(
    redis_server: RedisServer,
    fleet: list[tuple[str, bool, bool, bool]],
    opts: dict[str, object],
    seed: int,
) -> None:
    client = redis_server.client(decode_responses=True)
    client.flushall()
    settings_ = build_settings(urls=[redis_server.url], environ={})
    store = SidekiqStore(settings_.redis[0], settings_)
    filters = Filters(tags=opts["tags"])  # type: ignore[arg-type]
    scope = scope_of(opts["app"], "", filters)  # type: ignore[arg-type]
    quiet_options = QuietOptions(
        filters=filters,
        scope=scope,
        wait=bool(opts["wait"]),
        timeout_s=0.0,  # waiting: nothing can confirm in time, so some runs fail (exit 3)
        until=Until.DELIVERED,
        min_processes=opts["min_processes"],  # type: ignore[arg-type]
    )
    try:
        register(client, fleet, seed)
        if opts["previous"]:  # a deploy of the same scope before this one
            with contextlib.suppress(ConfigError):
                quiet_fleet(
                    [store], dataclasses.replace(quiet_options, wait=False, min_processes=None)
                )
        before = own_keys(client)
        try:
            report = quiet_fleet([store], quiet_options)
        except ConfigError:
            event("refused (exit 2)")
            assert own_keys(client) == before  # refused: nothing written
            return
        event(f"exit {int(report.exit_code)}")
        if report.exit_code != 0:
            return
        stored = client.hget(Keys().ledger(scope), report.deploy_id or "")
        record, problem = parse_deploy_record(None if stored is None else str(stored))
        assert record is not None and problem is None, (report, own_keys(client))
        assert record.scope == scope and record.deploy_id == report.deploy_id
        assert record.state.value == "complete"
        assert client.ttl(Keys().ledger(scope)) > 0
    finally:
        store.close()
        client.close()
