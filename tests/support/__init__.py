"""A private redis-server per test session (or benchmark run), on a free port.

Never the machine's own Redis: each server here is started by us, on a port we
picked, with no persistence, and stopped when we are done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import selectors
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

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


FIXTURES = Path(__file__).parent.parent / "fixtures"


def simulated_fleet(url: str, processes: Sequence[Any], *, namespace: str = "", **kw: Any) -> Any:
    """A ``SimulatedFleet`` with its own client, as ``quiesce simulate`` builds it."""
    from quiesce.sidekiq.keys import Keys
    from quiesce.sim.simulator import SimulatedFleet

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


# -- "reads never write": values and TTLs ---------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class KeyDump:
    """Every key as ``(type, value, pttl_ms)``, between two readings of Redis's clock."""

    keys: dict[str, tuple[str, object, int]]
    started_ms: int
    """Redis TIME before the first key was read."""
    ended_ms: int
    """Redis TIME after the last key was read."""


def _redis_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def dump_keys_with_ttls(client: redis.Redis, skip: Sequence[str] = ()) -> KeyDump:
    """``dump_keys`` plus each key's PTTL (-1: none), for ``ttl_changes``."""
    started = _redis_ms(client)
    values = dump_keys(client, skip)
    keys: dict[str, tuple[str, object, int]] = {}
    for key, entry in values.items():
        kind, value = cast(tuple[str, object], entry)
        keys[key] = (kind, value, int(client.pttl(key)))
    return KeyDump(keys, started, _redis_ms(client))


def ttl_changes(before: KeyDump, after: KeyDump) -> list[str]:
    """What changed between two dumps, beyond the clock: [] when nothing was written.

    Values must be identical and every TTL may only run down with the clock: never rise,
    never appear, never shorten faster than time passed, and a key may vanish only if its
    TTL ran out. Both bounds come from Redis's own clock (each PTTL was read between the
    dump's two TIMEs), so no test waits or guesses how long anything takes; 1 ms is
    PTTL's rounding. An ``EXPIRE <identity> 3600`` on a 60 s heartbeat hash is a rise.
    """
    elapsed = after.ended_ms - before.started_ms
    problems: list[str] = []
    for key, (kind, value, pttl) in before.keys.items():
        now = after.keys.get(key)
        if now is None:
            if pttl < 0 or pttl > elapsed + 1:
                problems.append(f"{key}: deleted (TTL {pttl} ms, {elapsed} ms passed)")
            continue
        now_kind, now_value, now_pttl = now
        if (now_kind, now_value) != (kind, value):
            problems.append(f"{key}: value changed: {(kind, value)!r} -> {(now_kind, now_value)!r}")
        if pttl < 0 and now_pttl >= 0:
            problems.append(f"{key}: TTL appeared ({now_pttl} ms)")
        elif pttl >= 0 and now_pttl < 0:
            problems.append(f"{key}: TTL removed (was {pttl} ms)")
        elif pttl >= 0 and now_pttl > pttl:
            problems.append(f"{key}: TTL rose from {pttl} to {now_pttl} ms")
        elif pttl >= 0 and now_pttl < pttl - elapsed - 1:
            problems.append(f"{key}: TTL cut from {pttl} to {now_pttl} ms in {elapsed} ms")
    problems.extend(f"{key}: created" for key in after.keys.keys() - before.keys.keys())
    return sorted(problems)


# -- round trips, counted on the wire -------------------------------------------------

HANDSHAKE_COMMANDS = frozenset({"HELLO", "AUTH", "CLIENT", "SELECT", "READONLY"})
"""What a client may send on connecting, before its first real request."""


@dataclasses.dataclass(slots=True)
class Exchange:
    """One round trip: the commands a client sent before it saw a reply."""

    commands: list[str]
    handshake: bool = False


class _RespCommands:
    """Splits a client's byte stream into command names (RESP arrays of bulk strings)."""

    def __init__(self) -> None:
        self._buf = b""

    @property
    def partial(self) -> bool:
        return bool(self._buf)

    def feed(self, data: bytes) -> list[str]:
        self._buf += data
        names: list[str] = []
        while (parsed := self._one()) is not None:
            names.append(parsed)
        return names

    def _one(self) -> str | None:
        buf, pos = self._buf, 0
        end = buf.find(b"\r\n")
        if end < 0:
            return None
        if not buf.startswith(b"*"):  # an inline command: one line
            self._buf = buf[end + 2 :]
            return buf[:end].split(b" ", 1)[0].decode(errors="replace").upper()
        count, pos = int(buf[1:end]), end + 2
        args: list[bytes] = []
        for _ in range(count):
            end = buf.find(b"\r\n", pos)
            if end < 0:
                return None
            size = int(buf[pos + 1 : end])
            start = end + 2
            if len(buf) < start + size + 2:
                return None
            args.append(buf[start : start + size])
            pos = start + size + 2
        self._buf = buf[pos:]
        name = args[0].decode(errors="replace").upper() if args else ""
        if name == "CLIENT" and len(args) > 1:
            name += " " + args[1].decode(errors="replace").upper()
        return name


class RoundTripProxy:
    """127.0.0.1:<free port> -> a redis-server, counting request/response exchanges.

    The proxy forwards every client byte to Redis at once but holds Redis's replies back
    until the client has sent nothing for ``hold_s`` and has no command half sent: so
    whatever a client writes before it needs a reply is one exchange, however Redis and
    the TCP stack cut it into chunks, and a client that needs a reply before sending more
    starts a new one. The count can only err upwards (a client that stalls for ``hold_s``
    in the middle of writing one pipeline), never down: a client that waited for a reply
    cannot have had it from us sooner. Leading exchanges made only of connection set-up
    commands (``HANDSHAKE_COMMANDS``) are counted apart.
    """

    def __init__(self, target_port: int, hold_s: float = 0.1) -> None:
        self.target_port, self.hold_s = target_port, hold_s
        self._lock = threading.Lock()
        self._connections: list[list[Exchange]] = []
        self._open: list[list[Exchange]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def reset(self) -> None:
        """Forget what was counted; connections still open count on from here."""
        with self._lock:
            for log in self._open:
                log.clear()
            self._connections = list(self._open)

    def exchanges(self) -> list[Exchange]:
        with self._lock:
            return [e for conn in self._connections for e in conn]

    def round_trips(self) -> int:
        return sum(not e.handshake for e in self.exchanges())

    def handshakes(self) -> int:
        return sum(e.handshake for e in self.exchanges())

    def handshakes_per_connection(self) -> list[int]:
        with self._lock:
            return [sum(e.handshake for e in conn) for conn in self._connections]

    def connections(self) -> int:
        with self._lock:
            return len(self._connections)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            log: list[Exchange] = []
            with self._lock:
                self._connections.append(log)
                self._open.append(log)
            thread = threading.Thread(target=self._relay, args=(client, upstream, log))
            thread.daemon = True
            thread.start()
            self._threads.append(thread)

    def _relay(self, client: socket.socket, upstream: socket.socket, log: list[Exchange]) -> None:
        with contextlib.suppress(OSError):  # a side went away: the connection is over
            self._pump(client, upstream, log)

    def _pump(self, client: socket.socket, upstream: socket.socket, log: list[Exchange]) -> None:
        parser = _RespCommands()
        current: Exchange | None = None
        set_up = False  # past the handshake: what follows is never counted as one
        held = b""
        last_sent = time.monotonic()
        with selectors.DefaultSelector() as sel, client, upstream:
            sel.register(client, selectors.EVENT_READ, "client")
            sel.register(upstream, selectors.EVENT_READ, "server")
            while not self._closed:
                wait = max(0.0, last_sent + self.hold_s - time.monotonic()) if held else 0.5
                for key, _ in sel.select(timeout=wait):
                    try:
                        data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    except OSError:
                        data = b""
                    if not data:
                        with contextlib.suppress(OSError):
                            client.sendall(held)
                        with self._lock:
                            self._open.remove(log)
                        return
                    if key.data == "server":
                        held += data
                        continue
                    upstream.sendall(data)
                    last_sent = time.monotonic()
                    if current is None:
                        current = Exchange([], handshake=not set_up)
                        with self._lock:
                            log.append(current)
                    names = parser.feed(data)
                    with self._lock:
                        current.commands.extend(names)
                    if any(n.split(" ")[0] not in HANDSHAKE_COMMANDS for n in names):
                        current.handshake, set_up = False, True
                idle = time.monotonic() - last_sent >= self.hold_s
                if held and idle and not parser.partial:
                    current = None  # the client's next bytes come after a reply: a new turn
                    client.sendall(held)
                    held = b""

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for thread in self._threads[1:]:
            thread.join(timeout=5)

    def __enter__(self) -> RoundTripProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
