"""Reads never write: not a value, not a TTL, not one write command on the wire.

A fleet captured from real Sidekiq 6.4.1, 7.3.10 and 8.1.7 (tests/fixtures, the
``quiet-pending`` scenario: heartbeat hashes with their 60 s TTLs, a pending signal list,
metrics keys that expire within a second or two) is loaded into the test's own
redis-server. Each read-only command runs while ``MONITOR`` records every command Redis
executes; each recorded command is classified by Redis itself (``COMMAND INFO`` flags
``write`` / ``may_replicate``), so there is no hand-kept list of writes to forget one in.
Then every key's value and PTTL are compared with ``ttl_changes``: a TTL may only run down.
MONITOR does not show commands flagged ``skip_monitor`` (AUTH, HELLO and the like), none
of which writes data; the dump comparison covers whatever it could miss.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from quiesce.cli.app import app
from tests.support import (
    FIXTURES,
    RedisServer,
    dump_keys,
    dump_keys_with_ttls,
    load_fixture_keys,
    ttl_changes,
)

VERSIONS = ("6.4.1", "7.3.10", "8.1.7")
READS = (
    ("status",),
    ("status", "--json"),
    ("status", "--machines"),
    ("quiet", "--dry-run", "--release", "r1"),
)
WRITE_FLAGS = frozenset({"write", "may_replicate"})


def load_fleet(client: redis.Redis) -> list[str]:
    """Every version's capture in one database: three processes, three Sidekiqs."""
    identities = []
    for version in VERSIONS:
        capture = json.loads((FIXTURES / f"sidekiq-{version}" / "quiet-pending.json").read_text())
        load_fixture_keys(client, capture["keys"])
        identities.append(str(capture["identity"]))
    return identities


def flags_of(client: redis.Redis, command: str) -> set[str]:
    """Redis's own flags for ``GET`` or ``CLIENT SETINFO`` (asked as ``client|setinfo``)."""
    name = command.lower().replace(" ", "|")
    try:
        reply: Any = client.execute_command("COMMAND", "INFO", name)  # type: ignore[no-untyped-call]
    except TypeError:  # redis-py's parser on Redis's nil for a command it does not know
        reply = None
    info = reply.get(name) if isinstance(reply, dict) else None
    assert info is not None, f"Redis does not know {command!r}: {reply!r}"
    return {str(f) for f in info["flags"]}


def is_write(client: redis.Redis, command: str) -> bool:
    return bool(flags_of(client, command) & WRITE_FLAGS)


def monitored(server: RedisServer, action: Callable[[], object]) -> list[str]:
    """The commands Redis executed while ``action`` ran, by name (``CLIENT SETINFO``).

    MONITOR answers OK before ``action`` starts; a marker ``ECHO`` from a connection of
    our own ends the recording, and that connection's own commands are left out.
    """
    marker = f"quiesce-readonly-{uuid.uuid4().hex}"
    watcher = server.client(decode_responses=True)
    seen: list[dict[str, Any]] = []
    with watcher.monitor() as monitor:  # type: ignore[no-untyped-call]
        action()
        server.client().echo(marker)
        while marker not in (entry := monitor.next_command())["command"]:
            seen.append(entry)
    ours = (entry["client_address"], entry["client_port"])
    names = []
    for item in seen:
        if (item["client_address"], item["client_port"]) == ours:
            continue
        words = str(item["command"]).split()
        name = words[0].upper()
        if name == "CLIENT" and len(words) > 1:
            name += " " + words[1].upper()
        names.append(name)
    return names


def run(url: str, *args: str) -> None:
    result = CliRunner().invoke(app, ["--redis-url", url, *args])
    assert result.exit_code == 0, (args, result.output)


@pytest.mark.parametrize("args", READS, ids=" ".join)
def test_reads_send_no_write_command_and_change_no_value_or_ttl(
    args: tuple[str, ...], redis_url: str, redis_server: RedisServer
) -> None:
    client = redis_server.client()
    load_fleet(client)
    before = dump_keys_with_ttls(client)
    commands = monitored(redis_server, lambda: run(redis_url, *args))
    after = dump_keys_with_ttls(client)

    assert {"SSCAN", "HMGET"} <= set(commands), commands  # it did read, and we saw it
    writes = sorted({c for c in commands if is_write(client, c)})
    assert writes == [], f"{' '.join(args)} sent write commands: {writes}"
    assert ttl_changes(before, after) == []


def test_the_checks_catch_an_injected_expire(redis_url: str, redis_server: RedisServer) -> None:
    """What the two checks above would say of a read that ran ``EXPIRE <identity> 3600``:
    the classifier calls EXPIRE a write, and the TTL rule reports the rise that the old
    value-only comparison (``dump_keys``) cannot see."""
    client = redis_server.client()
    identity = load_fleet(client)[0]
    assert is_write(client, "EXPIRE") and not is_write(client, "HMGET")
    assert not is_write(client, "CLIENT LIST")

    values_before, before = dump_keys(client), dump_keys_with_ttls(client)
    commands = monitored(redis_server, lambda: client.expire(identity, 3600))
    values_after, after = dump_keys(client), dump_keys_with_ttls(client)

    assert commands == ["EXPIRE"]
    assert values_after == values_before  # the old check: nothing to see
    problems = ttl_changes(before, after)
    assert len(problems) == 1 and problems[0].startswith(f"{identity}: TTL rose from ")


def test_the_ttl_rule_catches_persist_shortening_and_delete(
    redis_url: str, redis_server: RedisServer
) -> None:
    client = redis_server.client()
    identity = load_fleet(client)[0]
    before = dump_keys_with_ttls(client)
    client.persist(identity)
    client.expire(f"{identity}-signals", 1)
    client.delete("processes")
    client.set("new-key", "x")
    problems = ttl_changes(before, dump_keys_with_ttls(client))
    assert {p.split(": ")[0] for p in problems} == {
        identity,
        f"{identity}-signals",
        "new-key",
        "processes",
    }
    assert any("TTL removed" in p for p in problems)
    assert any("TTL cut" in p for p in problems)
