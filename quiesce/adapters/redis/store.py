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
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
import redis.exceptions as rex

from quiesce.adapters.redis.connect import (
    Command,
    annotate,
    classify,
    connect,
    is_noperm,
    is_transient,
    one_line,
)
from quiesce.adapters.redis.hints import empty_fleet_hints
from quiesce.adapters.redis.wire import (
    _exchange,
    _hash_reply,
    _keyspace,
    _ledger_commands,
    _opt_int,
    _parse_info,
    _queue,
    _summary,
    _wire,
    _work_hashes,
)
from quiesce.adapters.retry import redis_retry
from quiesce.settings import RedisTarget, Settings
from quiesce.sidekiq import keys as k
from quiesce.sidekiq.rows import (
    EmptyFleetHints,
    LedgerWrite,
    Poll,
    PollRow,
    Push,
    RawProcess,
    RawQueue,
    RawQueues,
    RawSnapshot,
    ServerIdentity,
)

log = logging.getLogger(__name__)


SCAN_COUNT = 10_000
"""SSCAN hint: a fleet of up to this many processes is listed in one call."""


T = TypeVar("T")


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
        self,
        fn: Callable[[], T],
        *,
        deadline: float | None = None,
        command: Command | None = None,
        what: str = "",
    ) -> T:
        """One logical request, retried while transient; never starts an attempt after
        ``deadline`` (``time.monotonic``), so a wait ends on time whatever Redis does.
        ``command``: what ``fn`` sends, named if Redis's ACL refuses it. ``what``: how
        ``-v`` names the round trip (command names and counts only: never keys or values)."""
        what = what or (str(command[0]) if command else "request")
        try:
            for attempt in redis_retry(is_transient, deadline=deadline):
                with attempt:
                    self.round_trips += 1
                    started = time.monotonic()
                    result = fn()
                    log.debug(
                        "%s: round trip %d: %s, %.1f ms",
                        self.label,
                        self.round_trips,
                        what,
                        (time.monotonic() - started) * 1000,
                    )
                    return result
        except (rex.RedisError, OSError) as exc:
            annotate(exc, command)
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
                    annotate(reply, command)
            return replies

        return self._call(run, deadline=deadline, what=_summary(commands, transaction))

    def _refusal(self, reply: Any) -> None:
        """A per-command error that means quiesce may not do its job here at all."""
        if isinstance(reply, rex.AuthenticationError) or (
            isinstance(reply, BaseException) and is_noperm(reply)
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

    def read_fleet(
        self, *, detail: bool = True, jobs: bool = False, scope: str | None = None
    ) -> RawSnapshot:
        """Every registered process, the server's identity, clients and keyspace, the latest
        record and, given a ``scope``, that scope's ledger (its deploy history).

        ``detail=False`` (the release command's plan) skips TTLs and pending signal
        names: at 5,000 processes every command per process costs. ``jobs`` adds an
        ``HGETALL`` of both work hash names per process (the version, which picks one,
        is only known once the row is decoded): still the same one pipeline.
        """
        members = self.members()
        commands = self._fleet_commands(members, detail=detail, jobs=jobs, scope=scope)
        probe = self._release_probe(members) if not detail else []
        results = self._pipeline([*commands, *probe], deadline=None)
        for reply in results[len(commands) :]:  # the release command's probe
            self._refusal(reply)
        return self._fleet_snapshot(
            members, results[: len(commands)], detail=detail, jobs=jobs, scope=scope
        )

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
                return RawProcess(identity, {}, None, (), self.label, error=one_line(result))
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
            errors = [r for r in replies[:4] if isinstance(r, Exception)]
            if errors:
                rows.append(PollRow(None, None, None, None, None, error=one_line(errors[0])))
                continue
            if work is None:
                quiet, beat = values
                rows.append(PollRow(bool(in_set), quiet, beat, int(pttl), int(llen)))
                continue
            quiet, beat, busy = values
            # A work key of the wrong type hides the jobs only: the signal and the beat
            # were read, so the process is still judged (and kept) on them.
            work_errors = [r for r in replies[4:] if isinstance(r, Exception)]
            merged = {
                t: v for h in _work_hashes(replies[4:], work[i]).values() for t, v in h.items()
            }
            rows.append(
                PollRow(
                    bool(in_set),
                    quiet,
                    beat,
                    int(pttl),
                    int(llen),
                    busy=busy,
                    work=merged,
                    work_error=one_line(work_errors[0]) if work_errors else None,
                )
            )
        return Poll(self._time_ms(results[0]), self._server(results[1]), tuple(rows))

    def empty_fleet_hints(self) -> EmptyFleetHints:
        """Where a Sidekiq fleet might be when this target has none (``hints``)."""
        return empty_fleet_hints(self)

    # -- exporter: one scrape (processes, queues, job sets, clients) ---------------------
    def read_scrape(
        self, *, client_list: bool = True, deadline: float | None = None, scope: str | None = None
    ) -> tuple[RawSnapshot, RawQueues]:
        """What one exporter scrape needs, in two round trips whatever the fleet and queue
        count (one more per further ``SSCAN`` page past ``SCAN_COUNT`` processes).

        The first reads the ``processes`` members, ``TIME`` (the bound for the due
        counts) and the ``queues`` set; the second is one pipeline: ``read_fleet``'s
        commands, then per queue ``LLEN`` + ``LINDEX -1``, the due scheduled and retry
        jobs, Sidekiq Pro's ``paused`` set and ``CLIENT LIST``. ``CLIENT LIST``, the job
        sets and INFO degrade to None when refused (some managed Redis disable
        ``CLIENT``); a refused process or queue read raises. ``scope``: whose deploy
        history the deploy and rejoin metrics follow (as ``read_fleet``).
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
        fleet_commands = self._fleet_commands(members, scope=scope)
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
        snapshot = self._fleet_snapshot(members, results[:split], scope=scope)
        return snapshot, self._queues(now_ms, names, results[split:], client_list)

    def _fleet_commands(
        self,
        members: Sequence[str],
        *,
        detail: bool = True,
        jobs: bool = False,
        scope: str | None = None,
    ) -> list[Command]:
        """The snapshot pipeline: TIME, INFO, the latest record, INFO keyspace, the scope's
        ledger, then per process its hash fields (with ``detail`` its TTL and pending
        signals, with ``jobs`` both work hash names: the version, which picks one, is
        only known once the row is decoded)."""
        keys = self.keys
        commands: list[Command] = [
            ("TIME",),
            ("INFO", "server"),
            ("INFO", "clients"),
            ("GET", keys.latest_deploy),
            ("INFO", "keyspace"),
            ("HGETALL", keys.ledger(scope)) if scope is not None else ("PING",),
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
        scope: str | None = None,
    ) -> RawSnapshot:
        # TIME and INFO are optional (a restricted user degrades); the deploy records and
        # the process rows are not.
        for reply in (results[3], *results[5:]):
            self._refusal(reply)
        now_ms, server_reply, clients_reply, deploy, keyspace, ledger = results[:6]
        rows = results[6:]
        if scope is not None and isinstance(ledger, Exception):
            raise classify(ledger, self.target, self._read_timeout_s)
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
            scope=scope,
            ledger=_hash_reply(ledger) if scope is not None else None,
            keyspace=_keyspace(keyspace),
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
                rows.append(RawQueue(name, None, None, error=one_line(bad)))
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

    # -- writes: the closed list ------------------------------------------------------
    def push_quiet(
        self,
        identities: Sequence[str],
        signal: str,
        records: Sequence[tuple[str, str, int]] = (),
        *,
        deadline: float | None = None,
        ledger: Sequence[LedgerWrite] = (),
    ) -> Push:
        """``Sidekiq::Process#signal`` for every identity, plus quiesce's own records
        ``(key, value, ttl_s)`` and ledger entries, in one ``MULTI``/``EXEC`` and one
        round trip.

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
        commands.extend(_ledger_commands(ledger))
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
                    errors[ident] = one_line(reply)
                    break
        for reply in executed[len(identities) * 2 :]:
            if isinstance(reply, Exception):
                raise classify(reply, self.target, self._read_timeout_s)
        return Push(pushed_at_ms=self._time_ms(replies[0]), errors=errors)

    def save_records(
        self,
        records: Sequence[tuple[str, str, int]],
        *,
        deadline: float | None = None,
        ledger: Sequence[LedgerWrite] = (),
    ) -> None:
        """quiesce's own keys (``quiesce:*``), each with its TTL, and ledger entries."""
        commands: list[Command] = [("SET", key, value, "EX", ttl) for key, value, ttl in records]
        commands.extend(_ledger_commands(ledger))
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


def open_stores(settings: Settings) -> list[SidekiqStore]:
    return [SidekiqStore(target, settings) for target in settings.redis]
