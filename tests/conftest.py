from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.support import RedisServer

_ENV_PREFIXES = ("QUIESCE_", "FLY_", "REDIS_")
_ENV_NAMES = ("RELEASE_LABEL",)


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No REDIS_URL, FLY_* or QUIESCE_* from the developer's shell leaks into a test."""
    import os

    for name in list(os.environ):
        if name.startswith(_ENV_PREFIXES) or name in _ENV_NAMES:
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """Our own server, emptied before each test (it is ours: nobody else uses it)."""
    redis_server.client().flushall()
    return redis_server.url


@pytest.fixture
def raw(redis_url: str, redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client(decode_responses=True)
    yield client
    client.close()
