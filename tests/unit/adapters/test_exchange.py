"""The store's read pipeline (``_exchange``): replies in order, error replies in place (a
real server: tests/integration/test_exchange.py)."""

from __future__ import annotations

import fakeredis
import pytest
import redis
import redis.exceptions as rex

from quiesce.adapters.redis.wire import _exchange


@pytest.fixture
def fake() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(decode_responses=True, encoding_errors="surrogateescape")


def test_replies_in_order_with_errors_in_place(fake: fakeredis.FakeRedis) -> None:
    fake.set("text", "x")
    fake.rpush("list", "a", "b")
    replies = _exchange(
        fake,
        [
            ("GET", "text"),
            ("LRANGE", "text", 0, -1),  # WRONGTYPE: its own reply, not the exchange's
            ("LRANGE", "list", 0, -1),
            ("PTTL", "missing"),
            ("HMGET", "missing", "a", "b"),
            ("ZCOUNT", "missing", "-inf", 1.5),
        ],
    )
    assert replies[0] == "x"
    assert isinstance(replies[1], rex.ResponseError) and "WRONGTYPE" in str(replies[1])
    assert replies[2:] == [["a", "b"], -2, [None, None], 0]


def test_keys_keep_bytes_that_are_not_utf8(fake: fakeredis.FakeRedis) -> None:
    key = b"host\xff:1:abc".decode("utf-8", "surrogateescape")
    fake.set(key.encode("utf-8", "surrogateescape"), "v")
    assert _exchange(fake, [("GET", key)]) == ["v"]


def test_nothing_to_send_opens_no_connection() -> None:
    # A client whose server does not exist: any connection attempt would fail.
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    assert _exchange(client, []) == []
