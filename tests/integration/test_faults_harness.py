"""The fault harness in tests/support.py does what the fault tests rely on.

Each test gets its own redis-server: a crash or a pause must never reach the session's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support import (
    RedisServer,
    acl_user,
    client_pause,
    crash,
    crash_and_restart,
    restart,
    run_id,
    set_maxmemory,
)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as private:
        yield private


def _bare_client(server: RedisServer, timeout_s: float) -> redis.Redis:
    """No retries: one attempt, so a pause or an outage shows as one error."""
    return redis.Redis(
        port=server.port, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0), decode_responses=True,
    )  # fmt: skip


def test_crash_and_restart_comes_back_empty_on_the_same_port(server: RedisServer) -> None:
    client = server.client(decode_responses=True)
    client.set("survivor", "1")
    client.sadd("processes", "host:1:abc")
    port, before, old_pid = server.port, run_id(server), server.proc.pid

    after = crash_and_restart(server)

    assert server.port == port
    assert server.proc.pid != old_pid and server.proc.poll() is None
    assert after != before
    client.connection_pool.disconnect()  # its sockets died with the old server
    assert client.dbsize() == 0
    assert client.get("survivor") is None
    assert client.info("server")["tcp_port"] == port
    client.close()


def test_crashed_server_refuses_until_restarted(server: RedisServer) -> None:
    crash(server)
    down = _bare_client(server, 1.0)
    with pytest.raises(redis.ConnectionError):
        down.ping()
    restart(server)
    assert down.ping() is True
    down.close()
    # restart() of a running server is a mistake the harness reports, not a silent no-op.
    with pytest.raises(RuntimeError, match="crash"):
        restart(server)


def test_paused_server_does_not_answer_within_the_pause(server: RedisServer) -> None:
    client_pause(server, 3000)
    paused = _bare_client(server, 0.3)
    with pytest.raises(redis.TimeoutError):
        paused.ping()
    paused.close()
    # Once the pause is over it answers again (bounded wait: the pause is 3 s).
    deadline = time.monotonic() + 10
    while True:
        probe = _bare_client(server, 1.0)
        try:
            assert probe.ping() is True
            break
        except redis.TimeoutError:
            assert time.monotonic() < deadline, "still paused 10 s after a 3 s pause"
        finally:
            probe.close()


def test_write_pause_still_answers_reads(server: RedisServer) -> None:
    server.client().set("k", "v")
    client_pause(server, 3000, mode="WRITE")
    paused = _bare_client(server, 0.3)
    assert paused.get("k") == "v"
    with pytest.raises(redis.TimeoutError):
        paused.set("k", "w")
    paused.close()


def test_acl_user_lacks_exactly_the_removed_command(server: RedisServer) -> None:
    url = acl_user(server, "-time", name="notime", password="s3cret")
    assert url == f"redis://notime:s3cret@127.0.0.1:{server.port}/0"
    limited = redis.Redis.from_url(url, decode_responses=True)
    assert limited.set("k", "v") is True
    assert limited.get("k") == "v"
    assert limited.sadd("processes", "a") == 1
    with pytest.raises(redis.exceptions.NoPermissionError):
        limited.time()
    limited.close()


def test_maxmemory_refuses_writes(server: RedisServer) -> None:
    set_maxmemory(server, 1)
    client = server.client(decode_responses=True)
    assert client.config_get("maxmemory")["maxmemory"] == "1"
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("k", "v")
    assert client.get("k") is None  # reads still work
    client.close()
