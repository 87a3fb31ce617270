"""The only module that talks to Redis.

Every method costs a fixed number of round trips whatever the fleet size: one
``SSCAN`` walk (one call up to ``SCAN_COUNT`` members), then one pipeline. The only
writes to Sidekiq's keys are the two Sidekiq's own API makes: signal pushes
(``Sidekiq::Process#signal``) and deploy marks (``Sidekiq::Deploy#mark``). The simulator's
heartbeat writes live here too, because they are Redis I/O, but only the simulator
calls them.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import redis
import redis.exceptions as rex
from redis.backoff import NoBackoff
from redis.retry import Retry

from quiesce import keys as k
from quiesce.errors import ProtocolError, QuiesceError, RedisRefused, RedisUnavailable
from quiesce.retry import redis_retry
from quiesce.rows import PollRow, RawProcess, RawSnapshot
from quiesce.settings import RedisTarget, Settings

log = logging.getLogger(__name__)

try:  # redis-py 7.1+: no CLIENT SETINFO on connect (two round trips fewer, nothing written)
    from redis.driver_info import DriverInfo

    _NO_CLIENT_SETINFO: dict[str, Any] = {"driver_info": DriverInfo(name=None, lib_version=None)}
except ImportError:  # pragma: no cover - older redis-py
    _NO_CLIENT_SETINFO = {"lib_name": None, "lib_version": None}

SCAN_COUNT = 10_000
"""SSCAN hint: a fleet of up to this many processes is listed in one call."""

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class BeatWrite:
    """One simulated heartbeat: what ``Launcher#❤`` writes in its registry MULTI."""

    identity: str
    fields: Mapping[str, str]


def encode_commands(commands: Sequence[tuple[str | int, ...]]) -> bytes:
    """A whole pipeline in RESP, byte for byte what redis-py's packer writes (a test checks)
    but several times faster: encoding is most of the client's work for a large fleet."""
    out: list[bytes] = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            data = str(arg).encode(errors="surrogateescape")  # round-trips what was read
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _ssl_cause(exc: BaseException) -> BaseException | None:
    """The TLS failure behind a redis-py error (a plain server never finishes a handshake)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError) or "handshake" in str(seen):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, rex.AuthenticationError) or _ssl_cause(exc) is not None:
        return False
    return isinstance(exc, rex.ConnectionError | rex.TimeoutError)


class SidekiqStore:
    def __init__(
        self, target: RedisTarget, settings: Settings, *, client: redis.Redis | None = None
    ) -> None:
        """``client`` replaces the connection built from the URL (unit tests pass fakeredis)."""
        self.target = target
        self.keys = k.Keys(settings.namespace)
        self.round_trips = 0
        self._read_timeout_s = settings.read_timeout_s
        options: dict[str, Any] = {
            "decode_responses": True,
            "encoding_errors": "surrogateescape",  # a non-UTF-8 byte must not stop a read
            "socket_connect_timeout": settings.connect_timeout_s,
            "socket_timeout": settings.read_timeout_s,
            # Retries are ours (quiesce.retry), bounded and only for transient errors.
            "retry": Retry(NoBackoff(), 0),
            # RESP2: no HELLO on connect, and Redis 4/5 (Sidekiq 5.2/6.x era) understand it.
            "protocol": 2,
        }
        if not target.is_tls:
            # Over TLS 1.3, redis-py 8 then finds the server's session tickets unread and
            # refuses the fresh connection ("Connection not ready"): keep SETINFO there.
            options.update(_NO_CLIENT_SETINFO)
        else:
            tls = target.tls
            options.update(ssl_ca_certs=tls.ca_cert, ssl_certfile=tls.cert, ssl_keyfile=tls.key)
            if tls.insecure:
                options.update(ssl_cert_reqs="none", ssl_check_hostname=False)
        if client is not None:
            self._client: redis.Redis = client
            return
        try:
            self._client = redis.Redis.from_url(target.url, **options)
        except (ValueError, TypeError) as exc:
            raise RedisRefused(f"cannot use this Redis URL: {exc}", url=target.label) from None

    @property
    def label(self) -> str:
        return self.target.label

    def close(self) -> None:
        self._client.close()

    # -- error handling ---------------------------------------------------------
    def _translate(self, exc: Exception) -> QuiesceError:
        url = self.label
        tls_error = _ssl_cause(exc)
        if isinstance(exc, rex.AuthenticationError):
            return RedisRefused(f"Redis refused authentication: {exc}", url=url)
        if isinstance(exc, rex.NoPermissionError):
            return RedisRefused(f"Redis ACL does not allow a command quiesce needs: {exc}", url=url)
        if tls_error is not None:
            reason = getattr(tls_error, "reason", None) or str(tls_error).split(": ")[-1]
            hint = (
                "; does this port speak TLS?"
                if self.target.is_tls
                else "; is this a TLS port? use rediss://"
            )
            return RedisRefused(f"TLS handshake failed: {reason}{hint}", url=url)
        if isinstance(exc, rex.BusyLoadingError):
            return RedisUnavailable("Redis is still loading its dataset", url=url)
        if isinstance(exc, rex.TimeoutError):
            return RedisUnavailable(
                f"Redis did not answer within {self._read_timeout_s:g} s", url=url
            )
        if isinstance(exc, rex.ConnectionError):
            message = self._describe_connection_error(exc)
            if "use rediss://" in message:
                # Every retry was cut off at once: a TLS port refusing plain text, not an outage
                # (a server that went away refuses the reconnection instead).
                return RedisRefused(message, url=url)
            return RedisUnavailable(message, url=url)
        if isinstance(exc, rex.ReadOnlyError):
            return RedisRefused("Redis is a read-only replica; point at the primary", url=url)
        if isinstance(exc, rex.ResponseError) and str(exc).startswith("WRONGTYPE"):
            return ProtocolError(
                "a Sidekiq key holds the wrong Redis type; is this Sidekiq's database?", url=url
            )
        return ProtocolError(f"Redis replied with an error: {exc}", url=url)

    def _describe_connection_error(self, exc: Exception) -> str:
        text = str(exc)
        if "Connection refused" in text:
            return "cannot connect to Redis: connection refused"
        if "Name or service not known" in text or "nodename nor servname" in text:
            return "cannot connect to Redis: unknown host"
        if "closed by server" in text or "reset by peer" in text:
            hint = "" if self.target.is_tls else " (does it require TLS? use rediss://)"
            return f"Redis closed the connection{hint}"
        if "timed out" in text.lower():
            return "cannot connect to Redis: connection timed out"
        return f"cannot reach Redis: {text.rstrip('.')}"

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            for attempt in redis_retry(is_transient):
                with attempt:
                    self.round_trips += 1
                    return fn()
        except rex.RedisError as exc:
            raise self._translate(exc) from exc
        except OSError as exc:  # e.g. a TLS file that cannot be read at connect time
            raise RedisRefused(f"cannot open connection: {exc}", url=self.label) from exc
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    def _pipeline(self, commands: Sequence[tuple[str | int, ...]]) -> list[Any]:
        """One round trip: every command written at once, then every reply read.

        Lower level than redis-py's ``Pipeline`` (about twice as fast per command, which
        is what a 5,000-process fleet costs) and free of its MULTI handling, so a raw
        ``MULTI ... EXEC`` per process goes on the wire exactly as Sidekiq sends it.
        An error reply is returned in place; connection errors raise.
        """

        def run() -> list[Any]:
            pool = self._client.connection_pool
            conn: Any = pool.get_connection()  # redis-py leaves these methods untyped
            try:
                conn.send_packed_command([encode_commands(commands)])
                replies: list[Any] = []
                for _ in commands:
                    try:
                        replies.append(conn.read_response())
                    except rex.ResponseError as exc:  # the reply was read: keep going
                        replies.append(exc)
                return replies
            except BaseException:
                conn.disconnect()  # replies may be half read: never reuse this socket
                raise
            finally:
                pool.release(conn)

        return self._call(run)

    def _fatal(self, result: Any) -> Any:
        """Per-command errors inside a pipeline: ACL denials stop everything."""
        if isinstance(result, rex.NoPermissionError | rex.AuthenticationError):
            raise self._translate(result)
        return result

    def _checked(self, results: Iterable[Any]) -> list[Any]:
        """Replies of a pipeline that must succeed as a whole."""
        replies = [self._fatal(r) for r in results]
        for reply in replies:
            if isinstance(reply, Exception):
                raise self._translate(reply)
        return replies

    # -- reading ----------------------------------------------------------------
    def members(self) -> list[str]:
        def scan() -> list[str]:
            found: dict[str, None] = {}
            cursor = 0
            while True:
                cursor, batch = self._client.sscan(self.keys.processes, cursor, count=SCAN_COUNT)
                found.update(dict.fromkeys(str(m) for m in batch))
                if cursor == 0:
                    return list(found)
                self.round_trips += 1

        return self._call(scan)

    def snapshot(
        self, *, server_info: bool = False, latest_deploy: bool = False, detail: bool = True
    ) -> RawSnapshot:
        """``detail=False`` reads only the hash fields: planning needs no TTLs or pending
        signal names, and at 5,000 processes every command per process costs."""
        members = self.members()
        keys = self.keys
        per = 3 if detail else 1
        commands: list[tuple[str | int, ...]] = [("TIME",)]
        if server_info:
            commands.append(("INFO", "clients"))
        if latest_deploy:
            commands.append(("GET", keys.latest_deploy))
        for m in members:
            commands.append(("HMGET", keys.process(m), *k.PROCESS_FIELDS))
            if detail:
                commands.append(("PTTL", keys.process(m)))
                commands.append(("LRANGE", keys.signals(m), 0, -1))

        results = self._pipeline(commands)
        now = self._time(results.pop(0))
        clients: Mapping[str, str] = {}
        if server_info:
            clients = _parse_info(results.pop(0))
        deploy = self._fatal(results.pop(0)) if latest_deploy else None
        rows = [self._raw(m, results[i * per : i * per + per]) for i, m in enumerate(members)]
        return RawSnapshot(
            redis=self.label,
            time=now,
            rows=tuple(rows),
            connected_clients=_opt_int(clients.get("connected_clients")),
            maxclients=_opt_int(clients.get("maxclients")),
            latest_deploy=deploy if isinstance(deploy, str) else None,
        )

    def _raw(self, identity: str, replies: Sequence[Any]) -> RawProcess:
        values, *detail = (self._fatal(r) for r in replies)
        pttl, signals = detail if detail else (None, [])
        for result in (values, pttl, signals):
            if isinstance(result, rex.ResponseError):
                return RawProcess(identity, {}, -2, (), self.label, error=f"Redis: {result}")
        return RawProcess(
            identity=identity,
            fields=dict(zip(k.PROCESS_FIELDS, values, strict=True)),
            pttl_ms=None if pttl is None else int(pttl),
            signals=tuple(signals),
            redis=self.label,
        )

    def _time(self, result: Any) -> float:
        # Some managed Redis services rename or disable TIME: fall back to our clock.
        if isinstance(result, tuple | list) and len(result) == 2:
            return int(result[0]) + int(result[1]) / 1e6
        log.debug("TIME unavailable on %s (%s): using the local clock", self.label, result)
        return time.time()

    def poll(self, identities: Sequence[str]) -> tuple[int, list[PollRow]]:
        """One round trip: what the confirmation loop needs about each target."""
        keys = self.keys
        commands: list[tuple[str | int, ...]] = [("TIME",)]
        for ident in identities:
            commands.append(("SISMEMBER", keys.processes, ident))
            commands.append(("HMGET", keys.process(ident), *k.POLL_FIELDS))
            commands.append(("PTTL", keys.process(ident)))
            commands.append(("LLEN", keys.signals(ident)))
        results = [self._fatal(r) for r in self._pipeline(commands)]
        now_ms = int(self._time(results.pop(0)) * 1000)
        rows = []
        for i in range(len(identities)):
            in_set, values, pttl, llen = results[i * 4 : i * 4 + 4]
            if any(isinstance(r, Exception) for r in (in_set, values, pttl, llen)):
                rows.append(PollRow(False, None, None, -2, 0))  # no longer a process hash
                continue
            quiet, beat, _busy = values
            rows.append(PollRow(bool(in_set), quiet, beat, int(pttl), int(llen)))
        return now_ms, rows

    # -- writing ----------------------------------------------------------------
    def push_signal(
        self,
        identities: Sequence[str],
        signal: str,
        *,
        records: Iterable[tuple[str, str, int]] = (),
    ) -> int:
        """``Sidekiq::Process#signal`` for every identity, in one round trip.

        Each push is its own ``MULTI LPUSH EXPIRE 60 EXEC``, byte for byte what Sidekiq's
        API sends; ``records`` are quiesce's own ``(key, value, ttl_s)`` written alongside.
        Returns the Redis time (ms) read just before the pushes.
        """
        keys = self.keys
        commands: list[tuple[str | int, ...]] = [("TIME",)]
        for ident in identities:
            commands.append(("MULTI",))
            commands.append(("LPUSH", keys.signals(ident), signal))
            commands.append(("EXPIRE", keys.signals(ident), k.SIGNAL_TTL_S))
            commands.append(("EXEC",))
        commands.extend(("SET", key, value, "EX", ttl) for key, value, ttl in records)
        results = self._pipeline(commands)
        now = results.pop(0)  # TIME may be disabled: _time falls back, it is not an error
        self._checked(results)
        return int(self._time(now) * 1000)

    def save(self, records: Iterable[tuple[str, str, int]]) -> None:
        self._checked(self._pipeline([("SET", key, v, "EX", ttl) for key, v, ttl in records]))

    def mark_deploy(self, label: str, datecode: str, stamp: str) -> bool:
        """``Sidekiq::Deploy#mark``: a 60 s NX lock per label, then HSETNX into the dated hash."""
        keys = self.keys
        lock = ("SET", keys.deploy_lock(label), stamp, "NX", "EX", k.DEPLOY_LOCK_TTL_S)
        (locked,) = self._checked(self._pipeline([lock]))
        if locked is None:
            return False
        marks = keys.marks(datecode)
        self._checked(
            self._pipeline(
                [
                    ("MULTI",),
                    ("HSETNX", marks, stamp, label),
                    ("EXPIRE", marks, k.MARK_TTL_S),
                    ("EXEC",),
                ]
            )
        )
        return True

    # -- the simulator's heartbeat ----------------------------------------------
    def beat(self, beats: Sequence[BeatWrite]) -> list[str | None]:
        """Heartbeats exactly as ``Launcher#❤`` writes them; returns each popped signal."""
        keys = self.keys
        commands: list[tuple[str | int, ...]] = []
        for b in beats:
            fields = [x for pair in b.fields.items() for x in pair]
            commands.append(("MULTI",))
            commands.append(("SADD", keys.processes, b.identity))
            commands.append(("EXISTS", keys.process(b.identity)))
            commands.append(("HSET", keys.process(b.identity), *fields))
            commands.append(("EXPIRE", keys.process(b.identity), k.HEARTBEAT_TTL_S))
            commands.append(("RPOP", keys.signals(b.identity)))
            commands.append(("EXEC",))
        results = self._checked(self._pipeline(commands))
        return [results[i * 7 + 6][4] for i in range(len(beats))]

    def leave(self, identities: Sequence[str]) -> None:
        """A stopping process's ``clear_heartbeat``: SREM and UNLINK ``:work``; the hash lingers."""
        keys = self.keys
        commands: list[tuple[str | int, ...]] = []
        for ident in identities:
            commands.append(("SREM", keys.processes, ident))
            commands.append(("UNLINK", keys.work(ident)))
        self._checked(self._pipeline(commands))


def _parse_info(reply: Any) -> dict[str, str]:
    """``INFO clients`` as a bulk string (``key:value`` lines); {} if it was refused."""
    if not isinstance(reply, str):
        return {}
    pairs = (line.split(":", 1) for line in reply.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def _opt_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def open_stores(settings: Settings) -> list[SidekiqStore]:
    return [SidekiqStore(target, settings) for target in settings.redis]
