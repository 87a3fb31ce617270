"""The store's read pipeline on a real server: after an exchange failed mid-read, the next
one reads its own replies, not those left over. (redis-py's pool also refuses a connection
with unread data when it hands one out, but only for data already arrived: the store
disconnects at once, so a reply still in flight cannot be read by the next exchange.)"""

from __future__ import annotations

from typing import Any

import pytest
import redis
import redis.exceptions as rex

from quiesce.adapters.redis.wire import _exchange


def test_a_failed_read_leaves_no_reply_behind(
    raw: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw.set("a", "1")
    raw.set("b", "2")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    calls = {"n": 0}
    kind = client.connection_pool.connection_class
    real = kind.read_response

    def flaky(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:  # both replies are on their way: neither is read
            raise rex.TimeoutError("Timeout reading from socket")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(kind, "read_response", flaky)
    try:
        with pytest.raises(rex.TimeoutError):
            _exchange(client, [("GET", "a"), ("GET", "b")])
        # The next exchange gets "2" for "b", not a reply left over from the failed one.
        assert _exchange(client, [("GET", "b"), ("GET", "a")]) == ["2", "1"]
    finally:
        client.close()
