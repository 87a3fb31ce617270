"""Every Redis command quiesce sends, and nothing else: the only module that imports redis.

Reads are a fixed number of round trips whatever the fleet size: one ``SSCAN`` walk
(one call up to ``SCAN_COUNT`` members), then one pipeline. The writes are a closed
list, all in :class:`SidekiqStore`'s "writes" section:

* signal pushes, exactly as ``Sidekiq::Process#signal`` writes them
  (``LPUSH <identity>-signals TSTP`` + ``EXPIRE 60``), all of them inside one
  ``MULTI``/``EXEC`` so a refused command (ACL, ``maxmemory``) aborts every push;
* quiesce's own deploy records under ``quiesce:`` (always with a TTL);
* Sidekiq's deploy mark, exactly as ``Sidekiq::Deploy#mark`` writes it;
* ``quiesce recover --stop``'s TERM, exactly as ``Sidekiq::Process#stop!`` writes it.

Replies are decoded with ``errors="surrogateescape"``: a non-UTF-8 byte in one key or
value becomes a lone surrogate that the decoder reports, instead of failing the whole
reply, and a key built from such a string encodes back to the same bytes.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import hiredis
import redis
import redis.exceptions as rex
from redis.backoff import NoBackoff
from redis.retry import Retry

from quiesce.adapters.retry import redis_retry
from quiesce.errors import (
    ConfigError,
    ProtocolError,
    QuiesceError,
    RedisProblem,
    RedisRefused,
    RedisUnavailable,
)
from quiesce.settings import RedisTarget, Settings
from quiesce.sidekiq import keys as k
from quiesce.sidekiq.queue_rows import RawQueue, RawQueues
from quiesce.sidekiq.rows import (
    EmptyFleetHints,
    Poll,
    PollRow,
    Push,
    RawProcess,
    RawSnapshot,
    ServerIdentity,
)

log = logging.getLogger(__name__)

try:  # redis-py 7.1+: no CLIENT SETINFO on connect (two round trips fewer, nothing written)
    from redis.driver_info import DriverInfo

    _NO_CLIENT_SETINFO: dict[str, Any] = {"driver_info": DriverInfo(name=None, lib_version=None)}
except ImportError:  # pragma: no cover - older redis-py
    _NO_CLIENT_SETINFO = {"lib_name": None, "lib_version": None}

SCAN_COUNT = 10_000
"""SSCAN hint: a fleet of up to this many processes is listed in one call."""

HINT_SCAN_COUNT = 1_000
"""One bounded ``SCAN`` looking for a namespaced ``*:processes`` when the fleet is empty."""

T = TypeVar("T")
Command = tuple[str | int | float, ...]


# -- error classification ---------------------------------------------------------
def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _first(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    return next((c for c in _causes(exc) if isinstance(c, kind)), None)


# redis-py strips the code from the replies it maps to a class (OOM, NOPERM, ...) and
# keeps it on the others (WRONGTYPE): classes first, the code only where there is none.
_OutOfMemory: type[Exception] = getattr(rex, "OutOfMemoryError", rex.ResponseError)


def _reply_code(exc: BaseException) -> str:
    """The error code an unmapped Redis error reply starts with (``WRONGTYPE``)."""
    text = str(exc).strip()
    return text.split(" ", 1)[0] if text[:1].isupper() else ""


def _in_tls_handshake(exc: BaseException) -> bool:
    """Whether the failure was raised inside ``SSLSocket.do_handshake`` (by frame, not text)."""
    for cause in _causes(exc):
        tb = cause.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_name == "do_handshake":
                return True
            tb = tb.tb_next
    return False


def is_transient(exc: BaseException) -> bool:
    """Worth another attempt: the connection failed or timed out, and not because of TLS
    or credentials (those do not fix themselves)."""
    if isinstance(exc, rex.AuthenticationError | rex.AuthorizationError):
        return False
    if _first(exc, ssl.SSLError) is not None or _in_tls_handshake(exc):
        return False
    return isinstance(exc, rex.ConnectionError | rex.TimeoutError)


def classify(exc: BaseException, target: RedisTarget, read_timeout_s: float) -> QuiesceError:
    """A redis-py (or socket) failure as one of ours: the class from the exception types
    in the cause chain, then a one-line message. Never includes a password."""
    url = target.label
    if isinstance(exc, rex.AuthenticationError | rex.AuthenticationWrongNumberOfArgsError):
        return RedisRefused(f"Redis refused authentication: {_one_line(exc)}", url=url)
    if _is_noperm(exc):
        return RedisRefused(_acl_message(exc), url=url)
    tls = _first(exc, ssl.SSLError)
    if tls is not None:
        return RedisRefused(_tls_message(tls, target), url=url)
    if isinstance(exc, rex.BusyLoadingError):
        return RedisUnavailable("Redis is still loading its dataset", url=url)
    if target.is_tls and _in_tls_handshake(exc):
        # A TLS client at a plain-text port: the server waits for a command that never
        # comes, so the handshake times out. A refusal no retry fixes.
        return RedisRefused(
            "TLS handshake got no answer: is this a plain-text port? use redis://", url=url
        )
    if isinstance(exc, rex.TimeoutError) or _first(exc, TimeoutError) is not None:
        return RedisUnavailable(f"Redis did not answer within {read_timeout_s:g} s", url=url)
    if isinstance(exc, rex.ConnectionError):
        return _connection_problem(exc, target)
    if isinstance(exc, rex.ReadOnlyError):
        return RedisRefused("Redis is a read-only replica; point at the primary", url=url)
    if isinstance(exc, _OutOfMemory):
        return RedisRefused("Redis is out of memory (maxmemory reached)", url=url)
    if isinstance(exc, rex.ResponseError) and "DB index is out of range" in str(exc):
        return ConfigError(f"the database in the Redis URL does not exist on {url}")
    if _reply_code(exc) == "WRONGTYPE":
        return ProtocolError(
            "a Sidekiq key holds the wrong Redis type; is this Sidekiq's database?", url=url
        )
    return ProtocolError(f"Redis replied with an error: {_one_line(exc)}", url=url)


def _connection_problem(exc: BaseException, target: RedisTarget) -> RedisProblem:
    url = target.label
    if _first(exc, ConnectionRefusedError) is not None:
        return RedisUnavailable("cannot connect to Redis: connection refused", url=url)
    if _first(exc, socket.gaierror) is not None:
        return RedisUnavailable("cannot connect to Redis: unknown host", url=url)
    if _first(exc, FileNotFoundError) is not None:
        return RedisUnavailable("cannot connect to Redis: no such unix socket", url=url)
    if isinstance(exc, rex.AuthorizationError):
        return RedisRefused(f"Redis refused the connection: {_one_line(exc)}", url=url)
    reset = _first(exc, ConnectionResetError | BrokenPipeError)  # type: ignore[arg-type]
    if reset is not None or "closed by server" in str(exc):
        if not target.is_tls:
            # A TLS port cuts a plain-text client off before any reply: a refusal that no
            # retry fixes, unlike a server that went away (which refuses the reconnect).
            return RedisRefused(
                "Redis closed the connection before answering (does it require TLS? use rediss://)",
                url=url,
            )
        return RedisUnavailable("Redis closed the connection", url=url)
    return RedisUnavailable(f"cannot reach Redis: {_one_line(exc).rstrip('.')}", url=url)


_ACL_COMMAND = re.compile(r"'([^']+)' command")


def _acl_message(exc: BaseException) -> str:
    """A NOPERM reply as the permission to grant: the command (``+lpush``) or the key.

    Redis names a refused command but never a refused key: the command quiesce sent is
    kept on the exception (``_annotate``) so the message can name both.
    """
    command: Command | None = getattr(exc, "quiesce_command", None)
    sent = " ".join(str(a) for a in command[:1]).upper() if command else ""
    named = _ACL_COMMAND.search(str(exc))
    if named is not None:
        name = named.group(1).lower()
        return f"Redis ACL: the user may not run {name.replace('|', ' ').upper()} (grant +{name})"
    if "key" in str(exc).lower() and command is not None and len(command) > 1:
        key = str(command[1])
        key = key if len(key) <= 120 else key[:117] + "..."
        return (
            f"Redis ACL: the user may not use the key {key!r} with {sent} "
            "(grant a key pattern that matches it)"
        )
    return f"Redis ACL: the user may not run a command quiesce needs: {_one_line(exc)}"


def _is_noperm(exc: BaseException) -> bool:
    """An ACL refusal, also when Redis 7 reports a refused ``EXEC`` as the transaction's
    abort (``EXECABORT Transaction discarded because of: NOPERM ...``)."""
    if isinstance(exc, rex.NoPermissionError):
        return True
    return isinstance(exc, rex.ResponseError) and "NOPERM " in str(exc)


def _annotate(exc: BaseException, command: Command | None) -> None:
    """Keep the command a NOPERM reply refused, for ``_acl_message``."""
    if command is not None and _is_noperm(exc):
        exc.quiesce_command = command  # type: ignore[attr-defined]


def _tls_message(tls: BaseException, target: RedisTarget) -> str:
    if isinstance(tls, ssl.SSLCertVerificationError):
        detail = tls.verify_message or "certificate verify failed"
        if "hostname" in detail.lower() or "IP address mismatch" in detail:
            return f"TLS: the server certificate does not match the host ({detail})"
        return f"TLS: the server certificate is not trusted ({detail}; see --tls-ca-cert)"
    reason = getattr(tls, "reason", None) or _one_line(tls)
    if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
        return f"TLS handshake failed: {reason}; is this a TLS port? use redis:// for plain text"
    if "PEM" in str(reason).upper() or reason in ("KEY_VALUES_MISMATCH", "NO_START_LINE"):
        return f"TLS: cannot load the client certificate or key (--tls-cert, --tls-key): {reason}"
    mine = "its" if target.tls.cert else "a"
    if isinstance(tls, ssl.SSLEOFError) or reason in _CLIENT_CERT_REFUSED:
        # A server that verifies clients hangs up mid-handshake, or alerts, when the
        # client sends no certificate or one it does not trust.
        return (
            f"TLS: the server ended the handshake ({reason}): does it require a client "
            f"certificate (--tls-cert, --tls-key) signed by {mine} CA it trusts?"
        )
    return f"TLS handshake failed: {reason}"


_CLIENT_CERT_REFUSED = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "TLSV1_ALERT_UNKNOWN_CA",
        "UNEXPECTED_EOF_WHILE_READING",
    }
)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def connect(target: RedisTarget, settings: Settings) -> redis.Redis:
    """A redis-py client for one target with quiesce's timeouts, TLS and RESP2.

    Raises ``ConfigError`` for a URL or option redis-py cannot use: found here, at
    start-up, not at the first command.
    """
    options: dict[str, Any] = {
        "decode_responses": True,
        "encoding_errors": "surrogateescape",
        "socket_connect_timeout": settings.connect_timeout_s,
        "socket_timeout": settings.read_timeout_s,
        # Retries are ours (quiesce.adapters.retry), bounded and only for transient errors.
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
        # Verification said out loud: redis-py before 6.0 did not check the hostname by
        # default (a certificate for any host passed).
        options.update(ssl_ca_certs=tls.ca_cert, ssl_certfile=tls.cert, ssl_keyfile=tls.key)
        if tls.insecure or _query_skips(target, "ssl_cert_reqs", {"none", "cert_none"}):
            # The URL's own ssl_* query still wins; these keep the options consistent
            # (ssl refuses a hostname check without a certificate check).
            options.update(ssl_cert_reqs="none", ssl_check_hostname=False)
        else:
            options.update(ssl_cert_reqs="required", ssl_check_hostname=True)
    if target.is_tls and _skips_verification(target):
        # Said on every run (not only with -v): a deploy that stopped checking who it
        # talks to must not look like one that checks.
        log.warning(
            "TLS certificate verification is OFF for %s (--tls-skip-verify or the URL's "
            "ssl_cert_reqs/ssl_check_hostname): anyone on the network path can pose as it",
            target.label,
        )
    try:
        client = redis.Redis.from_url(target.url, **options)
        # Builds (does not open) a connection: bad query options fail here, not mid-deploy.
        client.connection_pool.make_connection()
    except (ValueError, TypeError, rex.RedisError) as exc:
        raise ConfigError(f"cannot use the Redis URL {target.label}: {_one_line(exc)}") from None
    return client


def _query_skips(target: RedisTarget, name: str, off: set[str]) -> bool:
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(target.url).query)
    return bool({v.strip().lower() for v in query.get(name, [])} & off)


def _skips_verification(target: RedisTarget) -> bool:
    """``--tls-skip-verify``, or a URL query that turns a check off (redis-py lets the
    query win over options: ``?ssl_cert_reqs=none``, ``?ssl_check_hostname=false``)."""
    return (
        target.tls.insecure
        or _query_skips(target, "ssl_cert_reqs", {"none", "cert_none"})
        or _query_skips(target, "ssl_check_hostname", {"false", "0", "no", "n", "f", "off"})
    )


class SidekiqStore:
    """One Sidekiq universe (one Redis database, optionally namespaced)."""

    def __init__(
        self, target: RedisTarget, settings: Settings, *, client: redis.Redis | None = None
    ) -> None:
        """``client`` replaces the connection built from the URL (unit tests pass fakeredis)."""
        self.target = target
        self._label = target.label  # masked once: it is stamped on every process row
        self.keys = k.Keys(settings.namespace)
        self.round_trips = 0
        self._read_timeout_s = settings.read_timeout_s
        self._client: redis.Redis = client if client is not None else connect(target, settings)
        self.db = int(self._client.connection_pool.connection_kwargs.get("db") or 0)

    @property
    def label(self) -> str:
        return self._label

    def close(self) -> None:
        self._client.close()
        # redis-py before 5.1 leaves a pool built by from_url open on close().
        self._client.connection_pool.disconnect()

    # -- plumbing -------------------------------------------------------------------
    def _call(
        self, fn: Callable[[], T], *, deadline: float | None = None, command: Command | None = None
    ) -> T:
        """One logical request, retried while transient; never starts an attempt after
        ``deadline`` (``time.monotonic``), so a wait ends on time whatever Redis does.
        ``command``: what ``fn`` sends, named if Redis's ACL refuses it."""
        try:
            for attempt in redis_retry(is_transient, deadline=deadline):
                with attempt:
                    self.round_trips += 1
                    return fn()
        except (rex.RedisError, OSError) as exc:
            _annotate(exc, command)
            raise classify(exc, self.target, self._read_timeout_s) from exc
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    def _pipeline(
        self, commands: Sequence[Command], *, transaction: bool = False, deadline: float | None
    ) -> list[Any]:
        """One round trip; per-command error replies are returned in place."""

        def run() -> list[Any]:
            if transaction:
                pipe = self._client.pipeline(transaction=True)
                for command in commands:
                    _queue(pipe, *command)
                replies = list(pipe.execute(raise_on_error=False))
            else:
                replies = _exchange(self._client, commands)
            if not transaction:  # one reply per command, in order
                for command, reply in zip(commands, replies, strict=False):
                    _annotate(reply, command)
            return replies

        return self._call(run, deadline=deadline)

    def _refusal(self, reply: Any) -> None:
        """A per-command error that means quiesce may not do its job here at all."""
        if isinstance(reply, rex.AuthenticationError) or (
            isinstance(reply, BaseException) and _is_noperm(reply)
        ):
            raise classify(reply, self.target, self._read_timeout_s)

    def _time_ms(self, reply: Any) -> int:
        # Some managed Redis services rename or refuse TIME: fall back to our clock.
        if isinstance(reply, list | tuple) and len(reply) == 2:
            try:
                return int(reply[0]) * 1000 + int(reply[1]) // 1000
            except (TypeError, ValueError):
                pass
        log.debug("TIME unavailable on %s: using the local clock", self.label)
        return int(time.time() * 1000)

    def _server(self, reply: Any) -> ServerIdentity:
        info = _parse_info(reply)
        return ServerIdentity(
            run_id=info.get("run_id") or None,
            uptime_s=_opt_int(info.get("uptime_in_seconds")),
            db=self.db,
        )

    # -- reads ------------------------------------------------------------------------
    def members(self, *, deadline: float | None = None) -> list[str]:
        def scan() -> list[str]:
            found: dict[str, None] = {}
            cursor = 0
            while True:
                cursor, batch = self._client.sscan(
                    _wire(self.keys.processes),  # type: ignore[arg-type]
                    cursor,
                    count=SCAN_COUNT,
                )
                found.update(dict.fromkeys(str(m) for m in batch))
                if cursor == 0:
                    return list(found)
                self.round_trips += 1

        return self._call(scan, deadline=deadline, command=("SSCAN", self.keys.processes))

    def read_fleet(self, *, detail: bool = True, jobs: bool = False) -> RawSnapshot:
        """Every registered process, the server's identity and clients, the latest record.

        ``detail=False`` (the release command's plan) skips TTLs and pending signal
        names: at 5,000 processes every command per process costs. ``jobs`` adds an
        ``HGETALL`` of both work hash names per process (the version, which picks one,
        is only known once the row is decoded): still the same one pipeline.
        """
        members = self.members()
        commands = self._fleet_commands(members, detail=detail, jobs=jobs)
        probe = self._release_probe(members) if not detail else []
        results = self._pipeline([*commands, *probe], deadline=None)
        for reply in results[len(commands) :]:  # the release command's probe
            self._refusal(reply)
        return self._fleet_snapshot(members, results[: len(commands)], detail=detail, jobs=jobs)

    def _release_probe(self, members: Sequence[str]) -> list[Command]:
        """What the release command will need after its plan, asked with its plan so a
        missing ACL permission stops it before any signal: the confirmation poll's reads,
        and an empty ``MULTI``/``EXEC`` (applies nothing; a user refused ``MULTI`` would
        otherwise see its pushes applied one by one, outside any transaction)."""
        if not members:
            return []
        first = members[0]
        keys = self.keys
        return [
            ("SISMEMBER", keys.processes, first),
            ("PTTL", keys.process(first)),
            ("LLEN", keys.signals(first)),
            ("MULTI",),
            ("EXEC",),
        ]

    def _raw(
        self, identity: str, replies: Sequence[Any], *, detail: bool = True, jobs: bool = False
    ) -> RawProcess:
        values, *rest = replies
        pttl, signals = (rest[0], rest[1]) if detail else (None, [])
        work_replies = rest[2:] if detail else rest
        for result in (values, pttl, signals):
            if isinstance(result, rex.RedisError):
                return RawProcess(identity, {}, None, (), self.label, error=_one_line(result))
        return RawProcess(
            identity=identity,
            fields=dict(zip(k.PROCESS_FIELDS, values, strict=True)),
            pttl_ms=None if pttl is None else int(pttl),
            signals=tuple(str(s) for s in signals),
            redis=self.label,
            work=_work_hashes(work_replies) if jobs else None,
        )

    def poll(
        self,
        identities: Sequence[str],
        *,
        deadline: float | None = None,
        work: Sequence[Sequence[str]] | None = None,
    ) -> Poll:
        """One round trip: what the confirmation loop needs about each target.

        ``work`` (draining): per identity, the work hash suffixes its version writes;
        the row then also carries ``busy`` and the work hash (``HGETALL``), in the same
        pipeline. A per-target error reply (say, a key of the wrong type) is kept on
        that row: it never reads as "the process exited".
        """
        keys = self.keys
        fields = k.POLL_FIELDS if work is None else k.DRAIN_POLL_FIELDS
        commands: list[Command] = [("TIME",), ("INFO", "server")]
        for i, ident in enumerate(identities):
            commands.append(("SISMEMBER", keys.processes, ident))
            commands.append(("HMGET", keys.process(ident), *fields))
            commands.append(("PTTL", keys.process(ident)))
            commands.append(("LLEN", keys.signals(ident)))
            if work is not None:
                commands.extend(("HGETALL", keys.work_hash(ident, s)) for s in work[i])
        results = self._pipeline(commands, deadline=deadline)
        for reply in results[2:]:
            self._refusal(reply)
        rows = []
        at = 2
        for i in range(len(identities)):
            extra = len(work[i]) if work is not None else 0
            replies = results[at : at + 4 + extra]
            at += 4 + extra
            in_set, values, pttl, llen = replies[:4]
            errors = [r for r in replies if isinstance(r, Exception)]
            if errors:
                rows.append(PollRow(None, None, None, None, None, error=_one_line(errors[0])))
                continue
            if work is None:
                quiet, beat = values
                rows.append(PollRow(bool(in_set), quiet, beat, int(pttl), int(llen)))
                continue
            quiet, beat, busy = values
            merged = {
                t: v for h in _work_hashes(replies[4:], work[i]).values() for t, v in h.items()
            }
            rows.append(
                PollRow(bool(in_set), quiet, beat, int(pttl), int(llen), busy=busy, work=merged)
            )
        return Poll(self._time_ms(results[0]), self._server(results[1]), tuple(rows))

    def empty_fleet_hints(self) -> EmptyFleetHints:
        """Two bounded reads: one ``SCAN`` page for ``*:processes``, ``INFO keyspace``."""

        def look() -> tuple[Any, Any]:
            pipe = self._client.pipeline(transaction=False)
            _queue(pipe, "SCAN", 0, "MATCH", "*:processes", "COUNT", HINT_SCAN_COUNT)
            _queue(pipe, "INFO", "keyspace")
            scan, info = pipe.execute(raise_on_error=False)
            return scan, info

        scan, info = self._call(look)
        found: tuple[str, ...] = ()
        if isinstance(scan, list | tuple) and len(scan) == 2:
            found = tuple(sorted(str(x) for x in scan[1]))[:5]
        dbs: dict[int, int] = {}
        for name, value in _parse_info(info).items():
            if name.startswith("db") and name[2:].isdigit() and int(name[2:]) != self.db:
                count = value.split(",", 1)[0].removeprefix("keys=")
                if count.isdigit():
                    dbs[int(name[2:])] = int(count)
        return EmptyFleetHints(namespaced=found, other_dbs=dbs)

    # -- exporter: one scrape (processes, queues, job sets, clients) ---------------------
    def read_scrape(
        self, *, client_list: bool = True, deadline: float | None = None
    ) -> tuple[RawSnapshot, RawQueues]:
        """What one exporter scrape needs, in two round trips whatever the fleet and queue
        count (one more per further ``SSCAN`` page past ``SCAN_COUNT`` processes).

        The first reads the ``processes`` members, ``TIME`` (the bound for the due
        counts) and the ``queues`` set; the second is one pipeline: ``read_fleet``'s
        commands, then per queue ``LLEN`` + ``LINDEX -1``, the due scheduled and retry
        jobs, Sidekiq Pro's ``paused`` set and ``CLIENT LIST``. ``CLIENT LIST``, the job
        sets and INFO degrade to None when refused (some managed Redis disable
        ``CLIENT``); a refused process or queue read raises.
        """
        keys = self.keys
        first = self._pipeline(
            [
                ("SSCAN", keys.processes, 0, "COUNT", SCAN_COUNT),
                ("TIME",),
                ("SMEMBERS", keys.queues),
            ],
            deadline=deadline,
        )
        scan, now_reply, names_reply = first
        for reply in (scan, names_reply):
            self._refusal(reply)
            if isinstance(reply, Exception):
                raise classify(reply, self.target, self._read_timeout_s)
        cursor, batch = scan
        members = list(dict.fromkeys(str(m) for m in batch))
        if int(cursor) != 0:  # a fleet past SCAN_COUNT: walk the set the usual way
            members = self.members(deadline=deadline)
        now_ms = self._time_ms(now_reply)
        names = sorted(str(n) for n in names_reply)
        bound = f"{now_ms / 1000.0:.3f}"
        fleet_commands = self._fleet_commands(members)
        commands: list[Command] = [
            *fleet_commands,
            ("ZCOUNT", keys.schedule, "-inf", bound),
            ("ZCOUNT", keys.retry, "-inf", bound),
            ("SMEMBERS", keys.paused),
            ("CLIENT", "LIST") if client_list else ("PING",),
        ]
        for name in names:
            commands.append(("LLEN", keys.queue(name)))
            commands.append(("LINDEX", keys.queue(name), -1))
        results = self._pipeline(commands, deadline=deadline)
        split = len(fleet_commands)
        snapshot = self._fleet_snapshot(members, results[:split])
        return snapshot, self._queues(now_ms, names, results[split:], client_list)

    def _fleet_commands(
        self, members: Sequence[str], *, detail: bool = True, jobs: bool = False
    ) -> list[Command]:
        """The snapshot pipeline: TIME, INFO, the latest record, then per process its
        hash fields (with ``detail`` its TTL and pending signals, with ``jobs`` both work
        hash names: the version, which picks one, is only known once the row is decoded)."""
        keys = self.keys
        commands: list[Command] = [
            ("TIME",),
            ("INFO", "server"),
            ("INFO", "clients"),
            ("GET", keys.latest_deploy),
        ]
        for m in members:
            commands.append(("HMGET", keys.process(m), *k.PROCESS_FIELDS))
            if detail:
                commands.append(("PTTL", keys.process(m)))
                commands.append(("LRANGE", keys.signals(m), 0, -1))
            if jobs:
                commands.extend(("HGETALL", keys.work_hash(m, s)) for s in k.WORK_SUFFIXES)
        return commands

    def _fleet_snapshot(
        self,
        members: Sequence[str],
        results: Sequence[Any],
        *,
        detail: bool = True,
        jobs: bool = False,
    ) -> RawSnapshot:
        # TIME and INFO are optional (a restricted user degrades); the deploy record and
        # the process rows are not.
        for reply in results[3:]:
            self._refusal(reply)
        now_ms, server_reply, clients_reply, deploy = results[:4]
        rows = results[4:]
        per = (3 if detail else 1) + (len(k.WORK_SUFFIXES) if jobs else 0)
        clients = _parse_info(clients_reply)
        server = self._server(server_reply)
        return RawSnapshot(
            redis=self.label,
            time=self._time_ms(now_ms) / 1000.0,
            rows=tuple(
                self._raw(m, rows[i * per : i * per + per], detail=detail, jobs=jobs)
                for i, m in enumerate(members)
            ),
            connected_clients=_opt_int(clients.get("connected_clients")),
            maxclients=_opt_int(clients.get("maxclients")),
            latest_deploy=deploy if isinstance(deploy, str) else None,
            run_id=server.run_id,
            db=self.db,
        )

    def _queues(
        self, now_ms: int, names: Sequence[str], results: Sequence[Any], client_list: bool
    ) -> RawQueues:
        schedule, retry, paused, clients = results[:4]
        rows = []
        for i, name in enumerate(names):
            size, oldest = results[4 + i * 2 : 6 + i * 2]
            self._refusal(size)
            self._refusal(oldest)
            bad = next((r for r in (size, oldest) if isinstance(r, Exception)), None)
            if bad is not None:
                rows.append(RawQueue(name, None, None, error=_one_line(bad)))
                continue
            rows.append(RawQueue(name, int(size), oldest if isinstance(oldest, str) else None))
        return RawQueues(
            time=now_ms / 1000.0,
            queues=tuple(rows),
            schedule_due=_opt_int(schedule),
            retry_due=_opt_int(retry),
            paused=frozenset(str(p) for p in paused) if isinstance(paused, list) else None,
            client_list=clients if client_list and isinstance(clients, str) else None,
        )

    # -- doctor: busy jobs (minimal read; the drain feature reads these hashes too) ------
    def busy_work(self, identities: Sequence[str]) -> list[tuple[str, str]]:
        """``(identity, raw work entry)`` for every busy thread, in one round trip: HGETALL of
        both work keys per process (``:work`` from 6.4.2, ``:workers`` before; one exists)."""
        if not identities:
            return []
        commands: list[Command] = []
        for ident in identities:
            commands.append(("HGETALL", self.keys.work(ident)))
            commands.append(("HGETALL", self.keys.workers(ident)))
        results = self._pipeline(commands, deadline=None)
        found: list[tuple[str, str]] = []
        for i, ident in enumerate(identities):
            for reply in results[2 * i : 2 * i + 2]:
                self._refusal(reply)
                if isinstance(reply, Mapping):
                    values = list(reply.values())
                elif isinstance(reply, list | tuple):  # unparsed: field, value, field, value
                    values = list(reply[1::2])
                else:  # a per-key error (wrong type): not a busy job
                    values = []
                found.extend((ident, str(value)) for value in values)
        return found

    # -- writes: the closed list ------------------------------------------------------
    def push_quiet(
        self,
        identities: Sequence[str],
        signal: str,
        records: Sequence[tuple[str, str, int]] = (),
        *,
        deadline: float | None = None,
    ) -> Push:
        """``Sidekiq::Process#signal`` for every identity, plus quiesce's own records
        ``(key, value, ttl_s)``, in one ``MULTI``/``EXEC`` and one round trip.

        A command Redis refuses while queueing (ACL, ``maxmemory``) aborts the whole
        transaction: nothing was pushed, and this raises. A command that fails inside
        ``EXEC`` (a signal list of the wrong type) fails alone: it is returned in
        ``Push.errors`` and the others went in.
        """
        keys = self.keys
        commands: list[Command] = [("TIME",), ("MULTI",)]
        for ident in identities:
            commands.append(("LPUSH", keys.signals(ident), signal))
            commands.append(("EXPIRE", keys.signals(ident), k.SIGNAL_TTL_S))
        commands.extend(("SET", key, value, "EX", ttl) for key, value, ttl in records)
        commands.append(("EXEC",))
        # TIME goes before the MULTI, not in it: a TIME refused or renamed away must not
        # abort the pushes (the clock falls back), only a refused push may.
        replies = self._pipeline(commands, deadline=deadline)
        queued, executed = replies[2:-1], replies[-1]
        if isinstance(replies[1], Exception):
            # MULTI refused: every command ran on its own, not queued, and its reply is
            # its result. None went in: an ordinary refusal. Some did: say so, go on.
            if all(isinstance(r, Exception) for r in queued):
                raise classify(next(iter(queued), replies[1]), self.target, self._read_timeout_s)
            log.warning("Redis refused MULTI on %s: the pushes went out one by one", self.label)
            executed = queued
        if not isinstance(executed, list):
            # EXECABORT: a command was refused while queueing, so nothing was applied.
            refused = next((r for r in queued if isinstance(r, Exception)), executed)
            raise classify(refused, self.target, self._read_timeout_s)
        errors: dict[str, str] = {}
        for i, ident in enumerate(identities):
            for reply in executed[i * 2 : i * 2 + 2]:
                if isinstance(reply, Exception):
                    errors[ident] = _one_line(reply)
                    break
        for reply in executed[len(identities) * 2 :]:
            if isinstance(reply, Exception):
                raise classify(reply, self.target, self._read_timeout_s)
        return Push(pushed_at_ms=self._time_ms(replies[0]), errors=errors)

    def save_records(
        self, records: Sequence[tuple[str, str, int]], *, deadline: float | None = None
    ) -> None:
        """quiesce's own keys (``quiesce:*``), each with its TTL."""
        commands = [("SET", key, value, "EX", ttl) for key, value, ttl in records]
        for reply in self._pipeline(commands, deadline=deadline):
            if isinstance(reply, Exception):
                raise classify(reply, self.target, self._read_timeout_s)

    def mark_deploy(self, label: str, datecode: str, stamp: str) -> bool:
        """``Sidekiq::Deploy#mark``: a 60 s NX lock per label, then ``HSETNX`` into the
        dated hash, in a ``MULTI`` as Sidekiq sends it. False: another mark holds the lock."""
        keys = self.keys

        def lock() -> Any:
            client: Any = self._client
            command = ("SET", keys.deploy_lock(label), stamp, "NX", "EX", k.DEPLOY_LOCK_TTL_S)
            return client.execute_command(*(_wire(arg) for arg in command))

        if self._call(lock, command=("SET", keys.deploy_lock(label))) is None:
            return False
        marks = keys.marks(datecode)

        def mark() -> list[Any]:
            pipe = self._client.pipeline(transaction=True)
            _queue(pipe, "HSETNX", marks, stamp, label)
            _queue(pipe, "EXPIRE", marks, k.MARK_TTL_S)
            return list(pipe.execute(raise_on_error=False))

        for reply in self._call(mark, command=("HSETNX", marks)):
            if isinstance(reply, Exception):
                raise classify(reply, self.target, self._read_timeout_s)
        return True

    # -- rejoin --
    def push_stop(self, identities: Sequence[str], *, deadline: float | None = None) -> Push:
        """``Sidekiq::Process#stop!`` for every identity: ``LPUSH <identity>-signals TERM``
        + ``EXPIRE 60``, all in one ``MULTI`` (``quiesce recover --stop``): the process
        finishes its jobs and exits, and its supervisor (Fly's restart policy) starts a
        new one. Refusals are handled as for ``push_quiet``."""
        return self.push_quiet(identities, "TERM", deadline=deadline)


def _queue(pipe: Any, *command: str | int | float) -> None:
    """Queue one command on a pipeline (redis-py leaves ``execute_command`` untyped).

    Strings go out as bytes we encode: hiredis' packer ignores ``encoding_errors``, and a
    key built from a non-UTF-8 identity must reach Redis as the bytes Sidekiq wrote.
    """
    # Inlined _wire: a 10,000-process read queues 150,000 arguments.
    pipe.execute_command(
        *[
            arg.encode("utf-8", "surrogateescape") if isinstance(arg, str) else arg
            for arg in command
        ]
    )


def _exchange(client: redis.Redis, commands: Sequence[Command]) -> list[Any]:
    """What a non-transactional ``pipeline().execute(raise_on_error=False)`` does, minus
    its Python packing: hiredis packs each command (a 10,000-process read is ~30,000
    commands; redis-py's packer cost as much as decoding them all). Error replies come
    back in place. No reply callbacks either way: our command names go out as bytes,
    which redis-py's callback table never matched."""
    if not commands:  # as an empty pipeline: no connection, nothing sent
        return []
    pack: Callable[[tuple[bytes, ...]], bytes] = hiredis.pack_command  # type: ignore[assignment]
    packed = b"".join([pack(tuple(map(_arg_bytes, command))) for command in commands])
    pool = client.connection_pool
    connection: Any  # redis-py leaves send_packed_command and disconnect untyped
    try:
        connection = pool.get_connection()
    except TypeError:  # pragma: no cover - redis-py before 5.3 wants a command name
        connection = pool.get_connection("PIPELINE")
    try:
        connection.send_packed_command([packed])
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(connection.read_response())
            except rex.ResponseError as exc:
                replies.append(exc)
    except BaseException:
        # A reply left unread would answer the next command on this connection.
        connection.disconnect()
        raise
    finally:
        pool.release(connection)
    return replies


def _arg_bytes(arg: str | int | float | bytes) -> bytes:
    """One argument as redis-py's encoder sends it (numbers as their ``repr``), strings
    with ``surrogateescape`` (see ``_queue``)."""
    if isinstance(arg, str):
        return arg.encode("utf-8", "surrogateescape")
    if isinstance(arg, bytes):
        return arg
    return repr(arg).encode("ascii")


def _wire(arg: str | int | float) -> bytes | int | float:
    return arg.encode("utf-8", "surrogateescape") if isinstance(arg, str) else arg


def _work_hashes(
    replies: Sequence[Any], suffixes: Sequence[str] = k.WORK_SUFFIXES
) -> dict[str, dict[str, str]]:
    """``HGETALL`` replies for ``suffixes``, by suffix (an error reply reads as absent)."""
    out: dict[str, dict[str, str]] = {}
    for suffix, reply in zip(suffixes, replies, strict=True):
        if isinstance(reply, Mapping):
            out[suffix] = {str(f): str(v) for f, v in reply.items()}
        elif isinstance(reply, list | tuple):  # the raw RESP2 reply: field, value, ...
            out[suffix] = {str(f): str(v) for f, v in zip(reply[::2], reply[1::2], strict=True)}
    return out


def _parse_info(reply: Any) -> dict[str, str]:
    """An ``INFO`` reply as ``key -> value``; {} if it was refused or renamed away.

    redis-py parses INFO itself when it recognises the command: accept both shapes.
    """
    if isinstance(reply, Mapping):
        return {str(key): str(value) for key, value in reply.items()}
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
