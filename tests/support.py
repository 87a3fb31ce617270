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
