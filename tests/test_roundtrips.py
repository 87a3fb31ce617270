"""Round trips per command, counted on the wire by a TCP proxy, against fleets of 10 and 300.

The proxy (``tests.support.RoundTripProxy``) sits between quiesce and the test's own
redis-server and counts request/response exchanges: what a client writes before it sees
a reply is one. A per-process loop would show up as hundreds of exchanges at 300; a
counter inside quiesce could not tell (it counts what the code believes it does).
Connection set-up (HELLO, AUTH, CLIENT SETINFO, SELECT) is counted apart.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from quiesce.adapters.redis.store import SidekiqStore
from quiesce.settings import build_settings
from quiesce.sim.simulator import make_processes
from tests.support import RedisServer, RoundTripProxy

ROOT = Path(__file__).resolve().parent.parent
SIZES = (10, 300)

STATUS_MAX = 3
"""SSCAN, then one pipeline (TIME, INFO, the scope's deploy history, every process's
fields), plus one to spare."""
QUIET_NO_WAIT_MAX = 7
"""SSCAN, the snapshot (with the scope's history), the pre-push poll, the push (one MULTI,
with the record into the history), the final record, Sidekiq's deploy mark (lock, then
mark)."""
POLL_MAX = 1
HANDSHAKE_MAX = 2
"""Per connection: redis-py may send CLIENT SETINFO / SELECT before its first command."""


@pytest.fixture(scope="module")
def proxy(redis_server: RedisServer) -> Iterator[RoundTripProxy]:
    with RoundTripProxy(redis_server.port) as p:
        yield p


def register(client: redis.Redis, count: int) -> list[str]:
    """``count`` live processes, written straight into Redis as one heartbeat would."""
    client.flushall()
    procs = make_processes(count, per_machine=2, seed=count)
    now = time.time()
    pipe = client.pipeline(transaction=False)
    for p in procs:
        pipe.sadd("processes", p.identity)
        pipe.hset(p.identity, mapping=dict(p.fields(now)))  # type: ignore[arg-type]
        pipe.expire(p.identity, 60)
    pipe.execute()
    return [p.identity for p in procs]


def cli(url: str, *args: str) -> tuple[int, str]:
    """The real CLI in its own process: nothing of ours shares its interpreter."""
    done = subprocess.run(
        [sys.executable, "-m", "quiesce", "--redis-url", url, *args],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith(("QUIESCE_", "REDIS_"))},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def counted(proxy: RoundTripProxy) -> tuple[int, int]:
    """(round trips, handshake exchanges per connection at most) since the last reset."""
    per_conn = proxy.handshakes_per_connection()
    return proxy.round_trips(), max(per_conn, default=0)


def measure(proxy: RoundTripProxy, client: redis.Redis, count: int) -> dict[str, tuple[int, int]]:
    identities = register(client, count)
    out: dict[str, tuple[int, int]] = {}

    proxy.reset()
    code, text = cli(proxy.url, "status")
    assert code == 0, text
    assert f"{count} processes" in text or str(count) in text, text
    out["status"] = counted(proxy)

    proxy.reset()
    code, text = cli(proxy.url, "quiet", "--no-wait", "--release", f"rt-{count}")
    assert code == 0, text
    out["quiet --no-wait"] = counted(proxy)
    assert client.llen(f"{identities[-1]}-signals") == 1  # it did push, through the proxy

    settings = build_settings(urls=[proxy.url], environ={})
    store = SidekiqStore(settings.redis[0], settings)
    try:
        proxy.reset()
        rows = store.poll(identities).rows
        assert len(rows) == count and all(r.in_set for r in rows)
        out["poll"] = counted(proxy)
    finally:
        store.close()
    return out


def test_round_trips_do_not_grow_with_the_fleet(
    proxy: RoundTripProxy, redis_server: RedisServer
) -> None:
    client = redis_server.client()
    by_size = {n: measure(proxy, client, n) for n in SIZES}
    small, large = (by_size[n] for n in SIZES)
    assert small == large, by_size
    limits = {"status": STATUS_MAX, "quiet --no-wait": QUIET_NO_WAIT_MAX, "poll": POLL_MAX}
    for command, (round_trips, handshake) in small.items():
        assert 1 <= round_trips <= limits[command], (command, by_size)
        assert handshake <= HANDSHAKE_MAX, (command, by_size)


def test_the_proxy_sees_a_loop_of_commands_as_that_many_round_trips(
    proxy: RoundTripProxy, redis_server: RedisServer
) -> None:
    """The counter itself: a per-process loop is N exchanges, a pipeline of N is one."""
    client = redis.Redis(port=proxy.port)
    try:
        client.ping()  # connect (and any handshake) first
        proxy.reset()
        for i in range(5):
            client.get(f"k{i}")
        assert proxy.round_trips() == 5
        proxy.reset()
        pipe = client.pipeline(transaction=False)
        for i in range(2000):
            pipe.get(f"k{i}")
        pipe.execute()
        assert proxy.round_trips() == 1
    finally:
        client.close()
