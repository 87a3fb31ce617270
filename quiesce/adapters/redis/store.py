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
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import hiredis
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
from quiesce.adapters.retry import redis_retry
from quiesce.settings import RedisTarget, Settings
from quiesce.sidekiq import keys as k
from quiesce.sidekiq.rows import (
    EmptyFleetHints,
    FleetElsewhere,
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

HINT_SCAN_COUNT = 1_000
"""One bounded ``SCAN`` looking for a namespaced ``*:processes`` when the fleet is empty."""

HINT_MAX_DBS = 16
"""Other databases looked into when the fleet is empty (Redis has 16 by default)."""

HINT_MAX_SETS = 10
"""Process sets found elsewhere whose members are sampled."""

HINT_SAMPLE = 5
"""Members of each such set checked for a live heartbeat."""

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
        """Where a Sidekiq fleet might be when this target has none, in at most four
        bounded round trips (only ever asked when the fleet is empty): ``INFO keyspace``
        and one ``SCAN`` page for ``*processes`` here, the same in each other database
        that holds keys, then a sample of each set found and whether its members still
        beat. A refused ``SCAN`` still checks the plain ``processes`` of each database."""
        own = self.keys.processes

        def look() -> tuple[Any, Any]:
            pipe = self._client.pipeline(transaction=False)
            _queue(pipe, "INFO", "keyspace")
            _queue(pipe, "SCAN", 0, "MATCH", "*processes", "COUNT", HINT_SCAN_COUNT)
            info, scan = pipe.execute(raise_on_error=False)
            return info, scan

        info, scan = self._call(look)
        dbs = {db: n for db, n in (_keyspace(info) or {}).items() if db != self.db and n > 0}
        found: dict[tuple[int, str], None] = {}
        if self.keys.namespace:
            found[(self.db, "processes")] = None
        found.update(((self.db, key), None) for key in _scanned(scan))
        others = sorted(dbs)[:HINT_MAX_DBS]
        if others:
            commands: list[Command] = []
            for db in others:
                commands += [
                    ("SELECT", db),
                    ("SCAN", 0, "MATCH", "*processes", "COUNT", HINT_SCAN_COUNT),
                ]
            replies = self._in_dbs(commands)
            for i, db in enumerate(others):
                found[(db, "processes")] = None
                if not isinstance(replies[2 * i], Exception):
                    found.update(((db, key), None) for key in _scanned(replies[2 * i + 1]))
        candidates = [c for c in found if c != (self.db, own)][:HINT_MAX_SETS]
        namespaced = tuple(sorted(k for db, k in candidates if db == self.db and k != "processes"))
        return EmptyFleetHints(
            namespaced=namespaced[:5],
            other_dbs=dbs,
            elsewhere=self._live_sets(candidates),
        )

    def _in_dbs(self, commands: Sequence[Command]) -> list[Any]:
        """One pipeline that ``SELECT``s other databases, and back to ours at its end (the
        connection goes back to the pool). Its final ``SELECT`` reply is left off."""
        return self._pipeline([*commands, ("SELECT", self.db)], deadline=None)[:-1]

    def _live_sets(self, candidates: Sequence[tuple[int, str]]) -> tuple[FleetElsewhere, ...]:
        """Per ``(db, key)``: up to ``HINT_SAMPLE`` members and how many still beat (their
        heartbeat hash exists). A set the user may not read is no finding."""
        if not candidates:
            return ()
        # SSCAN and PTTL, not SRANDMEMBER and EXISTS: the shipped ACL roles grant these.
        commands: list[Command] = []
        for db, key in candidates:
            commands += [("SELECT", db), ("SSCAN", key, 0, "COUNT", HINT_SAMPLE)]
        replies = self._in_dbs(commands)
        samples: list[tuple[int, str, list[str]]] = []
        for i, (db, key) in enumerate(candidates):
            selected, scanned = replies[2 * i], replies[2 * i + 1]
            if isinstance(selected, Exception) or not (
                isinstance(scanned, list | tuple) and len(scanned) == 2
            ):
                continue  # not a set, refused, or the database could not be entered
            members = [str(m) for m in scanned[1]][:HINT_SAMPLE]
            if members:
                samples.append((db, key, members))
        if not samples:
            return ()
        commands = []
        for db, key, members in samples:
            prefix = key.removesuffix("processes")
            commands.append(("SELECT", db))
            commands += [("PTTL", prefix + m) for m in members]
        replies = self._in_dbs(commands)
        out, at = [], 0
        for db, key, members in samples:
            selected, ttls = replies[at], replies[at + 1 : at + 1 + len(members)]
            at += 1 + len(members)
            if isinstance(selected, Exception):
                continue
            live = sum(1 for t in ttls if isinstance(t, int) and t != -2)  # -2: no such key
            out.append(FleetElsewhere(db, key, live, len(members), same_db=db == self.db))
        return tuple(out)

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


def _ledger_commands(writes: Sequence[LedgerWrite]) -> list[Command]:
    """``HSET`` the record, ``HDEL`` what the history no longer keeps, ``EXPIRE`` the hash
    (a scope that stops deploying loses its history 14 days after its last deploy)."""
    commands: list[Command] = []
    for w in writes:
        commands.append(("HSET", w.key, w.deploy_id, w.body))
        drop = [d for d in w.drop if d != w.deploy_id]
        if drop:
            commands.append(("HDEL", w.key, *drop))
        commands.append(("EXPIRE", w.key, w.ttl_s))
    return commands


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


def _summary(commands: Sequence[Command], transaction: bool) -> str:
    """``pipeline of 12 commands (HMGET x4, PTTL x4, ...)``: names only, for ``-v``."""
    counts: dict[str, int] = {}
    for command in commands:
        name = str(command[0]).upper()
        counts[name] = counts.get(name, 0) + 1
    shown = ", ".join(f"{name} x{n}" if n > 1 else name for name, n in list(counts.items())[:8])
    more = ", ..." if len(counts) > 8 else ""
    kind = "transaction" if transaction else "pipeline"
    return f"{kind} of {len(commands)} commands ({shown}{more})"


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


def _scanned(reply: Any) -> list[str]:
    """Sidekiq process sets in one ``SCAN`` page (``processes``, ``<namespace>:processes``)."""
    if not (isinstance(reply, list | tuple) and len(reply) == 2):
        return []
    keys = sorted(str(x) for x in reply[1])
    return [key for key in keys if key == "processes" or key.endswith(":processes")]


def _keyspace(reply: Any) -> dict[int, int] | None:
    """``INFO keyspace`` as db -> key count (``db3:keys=12,expires=0,...``); None: refused."""
    if isinstance(reply, Exception) or reply is None:
        return None
    dbs: dict[int, int] = {}
    parsed = reply.items() if isinstance(reply, Mapping) else _parse_info(reply).items()
    for name, value in parsed:
        name = str(name)
        if not (name.startswith("db") and name[2:].isdigit()):
            continue
        if isinstance(value, Mapping):  # redis-py parsed it: {"keys": 12, ...}
            count = str(value.get("keys", ""))
        else:
            count = str(value).split(",", 1)[0].removeprefix("keys=")
        if count.isdigit():
            dbs[int(name[2:])] = int(count)
    return dbs


def _hash_reply(reply: Any) -> dict[str, str]:
    """An ``HGETALL`` reply as field -> value (a dict, or RESP2's flat list)."""
    if isinstance(reply, Mapping):
        return {str(f): str(v) for f, v in reply.items()}
    if isinstance(reply, list | tuple):
        return {str(f): str(v) for f, v in zip(reply[::2], reply[1::2], strict=False)}
    return {}


def _opt_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def open_stores(settings: Settings) -> list[SidekiqStore]:
    return [SidekiqStore(target, settings) for target in settings.redis]
