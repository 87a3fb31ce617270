"""A simulated Sidekiq fleet that heartbeats exactly like the real thing.

Each beat is ``Launcher#❤``'s registry MULTI: ``SADD processes``, ``EXISTS``, ``HSET`` of
the fields its version writes, ``EXPIRE 60``, ``RPOP <identity>-signals``. The hash
reports the quiet flag as it was *before* the popped signal, so ``quiet = "true"``
appears one beat after the pop, as in Sidekiq. TERM quiets, then the process leaves
(``SREM`` + ``UNLINK`` of its work hash; the hash lingers until it expires). Embedded
processes (7.0.3+) pop and ignore signals. What each version writes comes from
``versions.BANDS``. Used by tests, the benchmark and ``quiesce simulate``.

Processes can run jobs (``SimulatedProcess.start_job``): each beat first rewrites the
work hash as that version does (protocol doc 1.2 and 3: ``<identity>:workers`` up to
6.4.1, ``<identity>:work`` from 6.4.2; UNLINK, one entry per thread ``{"queue",
"payload", "run_at"}`` with the payload a job object up to 6.0.1 and a JSON string from
6.0.2, job timestamps in float seconds before 8.0 and integer milliseconds from 8.0,
``run_at`` in integer seconds; EXPIRE 60, or nothing at all when idle on 7.2.3+), then
writes ``busy`` from the same copy of the thread state. A job finishes at its own time;
the hash shows it until the next beat, as Sidekiq's does.

This module plays Sidekiq, so it writes what Sidekiq writes, with its own redis-py
client: ``quiesce.adapters.redis.store`` stays the closed list of the commands quiesce itself sends.
"""

from __future__ import annotations

import dataclasses
import json
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from quiesce.sidekiq.keys import HEARTBEAT_TTL_S, Keys
from quiesce.sidekiq.versions import (
    BANDS,
    JobTimeUnits,
    VersionBand,
    Weights,
    WorkPayload,
    band_for,
    parse_version,
)

_DEFAULT_VERSION = (7, 3, 10)
_WORK_ONLY_WHEN_BUSY = (7, 2, 3)
"""From 7.2.3 an idle beat writes no work hash at all (UNLINK only, #6227)."""


@dataclasses.dataclass(slots=True)
class SimulatedJob:
    """One job a simulated thread runs from ``run_at`` for ``seconds`` (fleet clock)."""

    tid: str
    jid: str
    job_class: str
    queue: str
    args: list[Any]
    run_at: float
    seconds: float
    enqueued_at: float

    @property
    def ends_at(self) -> float:
        return self.run_at + self.seconds

    def job_hash(self, band: VersionBand) -> dict[str, Any]:
        """The job as its Sidekiq serialises it (timestamps in that version's units)."""
        stamp: float | int = self.enqueued_at
        if band.job_time_units is JobTimeUnits.INT_MILLISECONDS:
            stamp = int(self.enqueued_at * 1000)
        return {
            "retry": 3,
            "queue": self.queue,
            "args": self.args,
            "class": self.job_class,
            "jid": self.jid,
            "created_at": stamp,
            "enqueued_at": stamp,
        }

    def entry(self, band: VersionBand) -> str:
        job = self.job_hash(band)
        payload: Any = job
        if band.work_payload is WorkPayload.JSON_STRING:
            payload = json.dumps(job, separators=(",", ":"))
        return json.dumps(
            {"queue": self.queue, "payload": payload, "run_at": int(self.run_at)},
            separators=(",", ":"),
        )


@dataclasses.dataclass(slots=True)
class SimulatedProcess:
    identity: str
    hostname: str
    pid: int
    version: str = "7.3.10"
    concurrency: int = 5
    queues: tuple[str, ...] = ("default",)
    tag: str = "app"
    labels: tuple[str, ...] = ()
    embedded: bool = False
    started_at: float = dataclasses.field(default_factory=time.time)
    busy: int = 0
    quiet: bool = False
    stopped: bool = False
    stalled: bool = False
    """Stops beating (a hung process): its hash expires after 60 s."""
    malformed_info: bool = False
    signals_seen: list[str] = dataclasses.field(default_factory=list)
    running: list[SimulatedJob] = dataclasses.field(default_factory=list)
    """Jobs its threads run; ``busy`` above adds threads with no work entry (tests)."""
    _info: str | None = None

    def start_job(
        self,
        seconds: float,
        *,
        job_class: str = "SleepJob",
        queue: str = "default",
        args: Sequence[Any] = (),
        now: float | None = None,
        jid: str | None = None,
    ) -> SimulatedJob:
        """A thread picks up a job now (``now``: the fleet's clock) for ``seconds``."""
        started = time.time() if now is None else now
        job = SimulatedJob(
            tid=_base36(random.getrandbits(40)),
            jid=jid or f"{random.getrandbits(96):024x}",
            job_class=job_class,
            queue=queue,
            args=list(args),
            run_at=started,
            seconds=seconds,
            enqueued_at=started - 0.5,
        )
        self.running.append(job)
        return job

    def finish_jobs(self, now: float) -> None:
        self.running = [j for j in self.running if j.ends_at > now]

    @property
    def band(self) -> VersionBand:
        """Its version's row in ``versions.BANDS`` (unparseable: 7.3.10; newer: the last)."""
        numbers = parse_version(self.version) or _DEFAULT_VERSION
        return band_for(numbers, allow_newer=True) or BANDS[0]

    def info_json(self) -> str:
        if self.malformed_info:
            return '{"hostname":"' + self.hostname + '","pid":'  # truncated, as a bad dump would be
        if self._info is None:
            self._info = json.dumps(self._info_dict(), separators=(",", ":"))
        return self._info

    def _info_dict(self) -> dict[str, Any]:
        band = self.band
        weights = {q: 0 for q in self.queues}
        info: dict[str, Any] = {
            "hostname": self.hostname,
            "started_at": self.started_at,
            "pid": self.pid,
            "tag": self.tag,
        }
        if band.capsules_in_info:
            info["capsules"] = {
                "default": {"concurrency": self.concurrency, "mode": "strict", "weights": weights}
            }
        if band.concurrency_in_info:
            info["concurrency"] = self.concurrency
        info["queues"] = list(self.queues)
        if band.weights is Weights.PER_CAPSULE:
            info["weights"] = [weights]
        elif band.weights is Weights.HASH:
            info["weights"] = {q: 1 for q in self.queues}
        info["labels"] = list(self.labels)
        info["identity"] = self.identity
        if band.info_has_version:
            info["version"] = self.version
        if band.info_has_embedded:
            info["embedded"] = self.embedded
        return info

    def fields(self, now: float) -> dict[str, str]:
        written = self.band.hash_fields
        fields = {
            "info": self.info_json(),
            "busy": str(self.busy + len(self.running)),
            "beat": repr(now),
            "quiet": "true" if self.quiet else "false",
        }
        optional = {"rss": "30132", "rtt_us": "36", "concurrency": str(self.concurrency)}
        fields.update((name, value) for name, value in optional.items() if name in written)
        return fields

    def handle(self, signal: str | None) -> None:
        if signal is None:
            return
        self.signals_seen.append(signal)
        band = self.band
        if self.embedded and band.embedded_ignores_signals:
            return
        if signal == band.quiet_signal:
            self.quiet = True
        elif signal == "TERM":
            self.quiet = True
            self.stopped = True


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if number == 0:
            return out


def make_processes(
    count: int,
    *,
    version: str = "7.3.10",
    per_machine: int = 1,
    seed: int | None = None,
    **overrides: Any,
) -> list[SimulatedProcess]:
    """``count`` processes on ``count / per_machine`` Machines with Fly-style 14-hex ids."""
    rng = random.Random(seed)
    processes = []
    machine = ""
    for i in range(count):
        if i % per_machine == 0:
            machine = f"{rng.getrandbits(56):014x}"
        pid = 1 + i % per_machine if per_machine > 1 else 1
        nonce = f"{rng.getrandbits(48):012x}"
        identity = f"{machine}:{pid}:{nonce}"
        processes.append(
            SimulatedProcess(
                identity=identity, hostname=machine, pid=pid, version=version, **overrides
            )
        )
    return processes


class SimulatedFleet:
    """Heartbeats a set of processes from one thread, each on its own phase.

    ``client`` must decode responses (``decode_responses=True``); ``keys`` carries the
    namespace. One round trip per batch of due beats: a transaction holding every due
    process's registry writes (each process's writes stay atomic, as in Sidekiq).
    """

    def __init__(
        self,
        client: redis.Redis,
        processes: Sequence[SimulatedProcess],
        *,
        keys: Keys | None = None,
        beat_interval_s: float | None = None,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
    ) -> None:
        self.client = client
        self.keys = keys or Keys()
        self.processes = list(processes)
        self.clock = clock
        self._rng = random.Random(seed)
        self._interval = {
            p.identity: beat_interval_s or p.band.beat_interval_s for p in self.processes
        }
        self._next: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.beat_errors = 0
        """Beats lost to a Redis outage (the processes go on, as Sidekiq's do)."""

    def beat(self, processes: Sequence[SimulatedProcess], now: float) -> list[str | None]:
        """One ``Launcher#❤`` registry MULTI per process, in one round trip; returns each
        popped signal (not yet handled)."""
        if not processes:
            return []
        keys = self.keys
        pipe = self.client.pipeline(transaction=True)
        for proc in processes:
            proc.finish_jobs(now)
            self._write_work(pipe, proc)
        for proc in processes:
            key = keys.process(proc.identity)
            pipe.sadd(keys.processes, proc.identity)
            pipe.exists(key)
            pipe.hset(key, mapping=proc.fields(now))  # type: ignore[arg-type]
            pipe.expire(key, HEARTBEAT_TTL_S)
            pipe.rpop(keys.signals(proc.identity))
        # A MULTI does not roll back: a failing RPOP (a signal list of the wrong type) leaves
        # that beat's HSET in place, and Sidekiq logs it and beats on. So do we.
        results = pipe.execute(raise_on_error=False)
        results = results[len(results) - 5 * len(processes) :]
        popped = [results[i * 5 + 4] for i in range(len(processes))]
        return [None if isinstance(p, Exception) else p for p in popped]

    def _write_work(self, pipe: Any, proc: SimulatedProcess) -> None:
        """Step 1 of a beat: the work hash, rewritten from this beat's thread state."""
        band = proc.band
        key = self.keys.process(proc.identity + band.work_key_suffix)
        pipe.unlink(key)
        numbers = parse_version(proc.version) or _DEFAULT_VERSION
        if not proc.running and numbers >= _WORK_ONLY_WHEN_BUSY:
            return
        if proc.running:
            pipe.hset(key, mapping={j.tid: j.entry(band) for j in proc.running})
        pipe.expire(key, HEARTBEAT_TTL_S)

    def leave(self, processes: Sequence[SimulatedProcess]) -> None:
        """``clear_heartbeat``: SREM and UNLINK the work hash (``:workers`` before 6.4.2),
        pipelined, not transactional; the identity hash lingers until it expires."""
        if not processes:
            return
        pipe = self.client.pipeline(transaction=False)
        for proc in processes:
            proc.stopped = True
            pipe.srem(self.keys.processes, proc.identity)
            pipe.unlink(self.keys.process(proc.identity + proc.band.work_key_suffix))
        pipe.execute()

    def leave_all(self) -> None:
        """Every process still registered leaves, as a fleet-wide clean shutdown would."""
        self.leave([p for p in self.processes if not p.stopped])

    def beat_due(self) -> int:
        """Beat every process whose turn has come; returns how many beat."""
        now = self.clock()
        due = [
            p
            for p in self.processes
            if not p.stopped and not p.stalled and self._next.get(p.identity, 0.0) <= now
        ]
        if not due:
            return 0
        try:
            popped = self.beat(due, now)
        except (redis.ConnectionError, redis.TimeoutError):
            # Sidekiq logs "heartbeat: ..." and tries again next beat, running on in memory.
            self.beat_errors += 1
            for proc in due:
                self._next[proc.identity] = now + self._interval[proc.identity]
            return 0
        leaving = []
        for proc, signal in zip(due, popped, strict=True):
            proc.handle(signal)
            interval = self._interval[proc.identity]
            if proc.identity not in self._next:  # after the first beat, spread the phases
                self._next[proc.identity] = now + self._rng.uniform(0.1, 1.0) * interval
            else:
                self._next[proc.identity] = now + interval
            if proc.stopped:
                leaving.append(proc)
        self.leave(leaving)
        return len(due)

    def next_due(self) -> float:
        live = [
            self._next.get(p.identity, 0.0)
            for p in self.processes
            if not p.stopped and not p.stalled
        ]
        return min(live, default=self.clock() + 0.5)

    def run(self) -> None:
        try:
            while not self._stop.is_set():
                self.beat_due()
                self._stop.wait(max(0.005, min(0.5, self.next_due() - self.clock())))
        except BaseException as exc:  # surfaced by stop() so a test sees why beats ended
            self.error = exc

    def start(self) -> SimulatedFleet:
        self.beat_due()  # registered before start() returns, like Sidekiq's first beat
        self._thread = threading.Thread(target=self.run, name="simulated-sidekiq", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> SimulatedFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
