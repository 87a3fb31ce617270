"""A private redis-server per test session (or benchmark run), on a free port.

Never the machine's own Redis: each server here is started by us, on a port we
picked, with no persistence, and stopped when we are done.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, *extra: str, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (bin/test installs it)")
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="quiesce-redis-")
        args: Sequence[str] = (
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.dir,
            *extra,
        )  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready(extra)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _wait_ready(self, extra: Sequence[str]) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    pass
                if "--tls-port" in extra or "--requirepass" in extra:
                    return
                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return
            except (OSError, redis.RedisError):
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start within 10 s")

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, **kwargs)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def dump_keys(client: redis.Redis, skip: Sequence[str] = ()) -> dict[str, object]:
    """Every key's value by type (not DUMP bytes: Redis may reorder a hash it reads)."""
    out: dict[str, object] = {}
    for raw_key in client.scan_iter(count=1000):
        key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
        if any(key.startswith(s) or key.endswith(s) for s in skip):
            continue
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        value: object
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = sorted(client.smembers(key))
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        else:
            value = kind
        out[key] = (kind, value)
    return out


def load_fixture_keys(client: redis.Redis, keys: dict[str, dict[str, Any]]) -> None:
    """Write a captured fixture's keys back into Redis, TTLs included."""
    import base64

    for key, spec in keys.items():
        kind, value, ttl = spec["type"], spec["value"], spec["ttl"]
        if isinstance(value, dict) and set(value) == {"base64"}:
            value = base64.b64decode(str(value["base64"]))
        if kind == "string":
            client.set(key, value)
        elif kind == "hash":
            client.hset(key, mapping=value)
        elif kind == "list":
            client.rpush(key, *value)
        elif kind == "set":
            client.sadd(key, *value)
        elif kind == "zset":
            client.zadd(key, {m: float(s) for m, s in value})
        if isinstance(ttl, int) and ttl > 0:
            client.expire(key, ttl)


FIXTURES = Path(__file__).parent / "fixtures"


def simulated_fleet(url: str, processes: Sequence[Any], *, namespace: str = "", **kw: Any) -> Any:
    """A ``SimulatedFleet`` with its own client, as ``quiesce simulate`` builds it."""
    from quiesce.keys import Keys
    from quiesce.simulator import SimulatedFleet

    client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)
    return SimulatedFleet(client, processes, keys=Keys(namespace), **kw)


# --- fault harness (owner: tests/test_faults_harness.py) -------------------------------------
# Redis misbehaving the ways production Redis does, on a server the tests started: a crash
# that comes back EMPTY on the same port (no persistence, or a failover to a replica that
# lost the writes), a paused server, an ACL user missing one command, a memory cap.
# Functions, not methods, so they work on any RedisServer (a private one or the session's).


def _server_args(server: RedisServer) -> list[str]:
    # Popen keeps the argv it was given: the restart reuses the port, dir and extra options.
    return [str(arg) for arg in server.proc.args]  # type: ignore[union-attr]


def run_id(server: RedisServer) -> str:
    """``INFO server`` run_id: a new one on every start of redis-server."""
    client = server.client(decode_responses=True)
    try:
        return str(client.info("server")["run_id"])
    finally:
        client.close()


def crash(server: RedisServer) -> None:
    """``kill -9`` the server: no shutdown, no save; clients see their sockets reset."""
    if server.proc.poll() is None:
        server.proc.kill()
    server.proc.wait(timeout=10)


def restart(server: RedisServer) -> str:
    """Start the server again on the same port with the same options; returns its new run_id.

    It comes back empty (``--save ""``, ``--appendonly no``). Clients made before keep a pool
    of dead sockets: their next command may raise ConnectionError once, so call
    ``client.connection_pool.disconnect()`` (or make a new client) after a restart.
    """
    if server.proc.poll() is None:
        raise RuntimeError("restart() of a running redis-server: crash() it first")
    args = _server_args(server)
    server.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server._wait_ready(args)
    return run_id(server)


def crash_and_restart(server: RedisServer) -> str:
    """A Redis crash without persistence: every key gone, same port, new run_id."""
    crash(server)
    return restart(server)


def client_pause(server: RedisServer, ms: int, mode: str = "ALL") -> None:
    """``CLIENT PAUSE ms mode``: Redis stops answering (ALL) or writing (WRITE) for ``ms``.

    Under ALL nothing ends it early: Redis 7.0 pauses ``CLIENT UNPAUSE`` and even a new
    connection's handshake too, so pick ``ms`` for the whole scenario.
    """
    client = server.client()
    try:
        client.client_pause(ms, all=mode.upper() == "ALL")
    finally:
        client.close()


def acl_user(server: RedisServer, *rules: str, name: str = "limited", password: str = "pw") -> str:
    """An ACL user allowed everything, then ``rules`` (e.g. ``"-time"``); returns its URL."""
    client = server.client()
    try:
        command = ("ACL", "SETUSER", name, "reset", "on", f">{password}", "~*", "&*", "+@all")
        client.execute_command(*command, *rules)  # type: ignore[no-untyped-call]
    finally:
        client.close()
    return f"redis://{name}:{password}@127.0.0.1:{server.port}/0"


def set_maxmemory(server: RedisServer, nbytes: int, policy: str = "noeviction") -> None:
    """Caps memory; with ``noeviction`` past the cap every write fails with OOM."""
    client = server.client()
    try:
        client.config_set("maxmemory-policy", policy)
        client.config_set("maxmemory", nbytes)
    finally:
        client.close()


# --- end of fault harness ---------------------------------------------------------------------
