"""A simulated deploy: the fleet, the job producer and flyctl's steps on one thread.

See ``quiesce.sim.demo`` for what the demo shows; this module is the world it runs in.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import itertools
import json
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

from quiesce.sidekiq.keys import Keys
from quiesce.sidekiq.versions import JobTimeUnits
from quiesce.sidekiq.work import job_time
from quiesce.sim.simulator import SimulatedFleet, SimulatedProcess

if TYPE_CHECKING:
    import redis

    from quiesce.sim.embedded_redis import Kind

Strategy = Literal["immediate", "bluegreen"]

QUEUE = "default"
QUEUE_KEY = "queue:default"
"""Sidekiq's queue list (no namespace: the demo's Redis is its own)."""
QUEUES_KEY = "queues"

OLD_RELEASE = "demo-v1"
NEW_RELEASE = "demo-v2"
TAG = "demo"

TICK_S = 0.05
BATCH = 4
"""Machines flyctl updates at once in the demo (its default is 8: 4 shows the batches),
more for a large fleet so that the deploy has at most ``MAX_BATCHES``."""
MAX_BATCHES = 3
BATCH_GAP_S = 1.0
BOOT_S = (0.5, 1.5)
SLOW_BOOT_S = (3.0, 4.0)
SLOW_SHARE = 0.25
KILL_TIMEOUT_S = 5.0
"""Jobs still running at the kill timeout are pushed back to the queue, as Sidekiq does."""
GREEN_WAIT_S = 6.0
"""How long flyctl waits for the greens' checks in the demo (its wait_timeout is 5m)."""
JOB_S = (0.2, 1.2)
WARM_UP_S = 1.5
POLL_S = 0.5


@dataclasses.dataclass(frozen=True, slots=True)
class DemoOptions:
    machines: int = 12
    sidekiq_version: str = "7.3.10"
    strategy: Strategy = "immediate"
    fail_machine: int | None = None
    """1-based index of the Machine that does not come back."""
    beat_interval_s: float = 1.0
    rejoin_timeout_s: float = 30.0
    metrics_port: int = 0
    """0: a free port."""
    redis: Kind = "auto"
    seed: int | None = 7
    concurrency: int = 5
    jobs_per_s: float | None = None
    """Default: two per Machine per second (about a third of the fleet's capacity)."""


# -- the simulated world ---------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class JobStats:
    enqueued: int = 0
    done: int = 0
    requeued: int = 0
    longest_wait_s: float = 0.0
    no_consumer_s: float = 0.0


@dataclasses.dataclass(slots=True)
class _Running:
    proc: SimulatedProcess
    fleet: SimulatedFleet
    jobs: list[tuple[float, str]] = dataclasses.field(default_factory=list)
    """(finish time, job JSON) of the jobs in flight."""
    stopping_until: float | None = None
    on_exit: Callable[[], None] | None = None


class Simulation:
    """The fleet, its jobs and the deploy, on one thread. ``say`` prints a line."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        options: DemoOptions,
        say: Callable[[str], None],
    ) -> None:
        self.client, self.keys, self.options, self.say = client, keys, options, say
        self.rng = random.Random(options.seed)
        self.stats = JobStats()
        self.procs: dict[str, _Running] = {}
        self.error: BaseException | None = None
        self.deploy_done = threading.Event()
        self.deploy_failed = False
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()
        self._last = self._started
        self._jid = itertools.count(1)
        self._pid = itertools.count(4000 + self.rng.randrange(1000), 7)
        band = SimulatedProcess("-", "-", 0, version=options.sidekiq_version).band
        self._ms = band.job_time_units is JobTimeUnits.INT_MILLISECONDS

    # -- scheduling -------------------------------------------------------------------
    def at(self, delay_s: float, action: Callable[[], None]) -> None:
        with self._lock:
            heapq.heappush(self._events, (time.monotonic() + delay_s, next(self._order), action))

    def _due(self, now: float) -> list[Callable[[], None]]:
        with self._lock:
            due = []
            while self._events and self._events[0][0] <= now:
                due.append(heapq.heappop(self._events)[2])
            return due

    # -- processes --------------------------------------------------------------------
    def boot(self, processes: Sequence[SimulatedProcess]) -> None:
        """Processes start: their first beat registers them, as Sidekiq's does."""
        fleet = SimulatedFleet(
            self.client,
            processes,
            keys=self.keys,
            beat_interval_s=self.options.beat_interval_s,
            seed=self.rng.randrange(1 << 30),
        )
        for proc in processes:
            self.procs[proc.identity] = _Running(proc, fleet)
        fleet.beat_due()

    def new_process(self, hostname: str, release: str) -> SimulatedProcess:
        pid = next(self._pid)
        return SimulatedProcess(
            identity=f"{hostname}:{pid}:{self.rng.getrandbits(48):012x}",
            hostname=hostname,
            pid=pid,
            version=self.options.sidekiq_version,
            concurrency=self.options.concurrency,
            tag=TAG,
            labels=(f"release:{release}",),
        )

    def stop_process(self, proc: SimulatedProcess, then: Callable[[], None] | None = None) -> None:
        """The kill signal: Sidekiq stops fetching, finishes its jobs, then leaves."""
        running = self.procs.get(proc.identity)
        if running is None or proc.stopped:
            return
        proc.quiet = True
        running.stopping_until = time.monotonic() + KILL_TIMEOUT_S
        running.on_exit = then

    def _exit(self, proc: SimulatedProcess, running: _Running) -> None:
        if running.jobs:  # killed at the timeout: Sidekiq pushes unfinished jobs back
            self.client.rpush(QUEUE_KEY, *(job for _, job in running.jobs))
            self.stats.requeued += len(running.jobs)
            running.jobs.clear()
        running.fleet.leave([proc])
        del self.procs[proc.identity]
        if running.on_exit is not None:
            running.on_exit()

    def live(self) -> list[SimulatedProcess]:
        return [r.proc for r in self.procs.values() if not r.proc.stopped]

    # -- jobs -------------------------------------------------------------------------
    def _job(self) -> str:
        now = time.time()
        stamp: float | int = int(now * 1000) if self._ms else now
        return json.dumps(
            {
                "retry": True,
                "queue": QUEUE,
                "class": "DemoJob",
                "args": [next(self._jid)],
                "jid": f"{self.rng.getrandbits(96):024x}",
                "created_at": stamp,
                "enqueued_at": stamp,
            },
            separators=(",", ":"),
        )

    def enqueue(self, n: int) -> None:
        """``Sidekiq::Client#push``: ``SADD queues``, ``LPUSH queue:<name>``."""
        if n <= 0:
            return
        pipe = self.client.pipeline(transaction=True)
        pipe.sadd(QUEUES_KEY, QUEUE)
        pipe.lpush(QUEUE_KEY, *(self._job() for _ in range(n)))
        pipe.execute()
        self.stats.enqueued += n

    def _produce(self, now: float) -> None:
        rate = self.options.jobs_per_s
        if rate is None:
            rate = 2.0 * self.options.machines
        self.enqueue(int((now - self._started) * rate) - self.stats.enqueued)

    def _work(self, now: float, dt: float) -> None:
        for running in list(self.procs.values()):
            proc = running.proc
            kept = [(t, job) for t, job in running.jobs if t > now]
            self.stats.done += len(running.jobs) - len(kept)
            running.jobs = kept
            proc.busy = len(kept)
            until = running.stopping_until
            if until is not None and (not kept or now >= until):
                self._exit(proc, running)
        takers = [p for p in self.live() if not p.quiet and not p.stopped]
        if not takers:
            self.stats.no_consumer_s += dt
            return
        free = [p for p in takers for _ in range(p.concurrency - p.busy)]
        if not free:
            return
        self.rng.shuffle(free)
        free = free[: max(20, 2 * self.options.machines)]
        pipe = self.client.pipeline(transaction=False)
        for _ in free:
            pipe.rpop(QUEUE_KEY)  # Sidekiq's fetch is BRPOP: the oldest job first
        wall = time.time()
        for proc, job in zip(free, pipe.execute(), strict=True):
            if job is None:
                break
            self.stats.longest_wait_s = max(self.stats.longest_wait_s, _waited(job, wall))
            self.procs[proc.identity].jobs.append((now + self.rng.uniform(*JOB_S), job))
            proc.busy += 1

    def waiting(self) -> tuple[int, float | None]:
        """Jobs in the queue, and how long the oldest (the next fetched) has waited."""
        pipe = self.client.pipeline(transaction=False)
        pipe.llen(QUEUE_KEY)
        pipe.lindex(QUEUE_KEY, -1)
        length, oldest = pipe.execute()
        return int(length), None if oldest is None else _waited(oldest, time.time())

    # -- the thread -------------------------------------------------------------------
    def _tick(self) -> None:
        now = time.monotonic()
        for action in self._due(now):
            action()
        for fleet in {id(r.fleet): r.fleet for r in self.procs.values()}.values():
            fleet.beat_due()
        self._produce(now)
        self._work(now, now - self._last)
        self._last = now

    def run(self) -> None:
        try:
            while not self._stop.is_set():
                self._tick()
                self._stop.wait(TICK_S)
        except BaseException as exc:  # the main thread raises it: the demo stops
            self.error = exc

    def start(self) -> None:
        self._started = self._last = time.monotonic()
        self._thread = threading.Thread(target=self.run, name="demo-fleet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    # -- the deploy -------------------------------------------------------------------
    def deploy(self, old: Sequence[SimulatedProcess], strategy: Strategy) -> None:
        failing = self._failing(old)
        if strategy == "bluegreen":
            self._bluegreen(old, failing)
        else:
            self._immediate(old, failing)

    def _failing(self, old: Sequence[SimulatedProcess]) -> str | None:
        n = self.options.fail_machine
        return old[n - 1].hostname if n is not None and 0 < n <= len(old) else None

    def _boot_delay(self) -> tuple[float, str]:
        if self.rng.random() < SLOW_SHARE:
            return self.rng.uniform(*SLOW_BOOT_S), " (slow boot)"
        return self.rng.uniform(*BOOT_S), ""

    def _immediate(self, old: Sequence[SimulatedProcess], failing: str | None) -> None:
        remaining = {p.hostname for p in old}

        def landed(host: str) -> None:
            remaining.discard(host)
            if not remaining:
                self.say("deploy: every Machine updated")
                self.deploy_done.set()

        def replace(proc: SimulatedProcess) -> None:
            delay, slow = self._boot_delay()

            def started() -> None:
                new = self.new_process(proc.hostname, NEW_RELEASE)
                self.boot([new])
                self.say(f"  {proc.hostname}: new process pid {new.pid} started{slow}")
                landed(proc.hostname)

            def exited() -> None:
                if proc.hostname == failing:
                    self.say(f"  {proc.hostname}: old process exited; the new one never starts")
                    self.deploy_failed = True
                    landed(proc.hostname)
                else:
                    self.at(delay, started)

            self.stop_process(proc, then=exited)

        size = max(BATCH, -(-len(old) // MAX_BATCHES))
        self.say(f"deploy: flyctl updates the Machines in place, {size} at a time")
        for i in range(0, len(old), size):
            batch = old[i : i + size]

            def update(batch: Sequence[SimulatedProcess] = batch) -> None:
                self.say(f"deploy: updating {len(batch)} Machines")
                for proc in batch:
                    replace(proc)

            self.at(i // size * BATCH_GAP_S, update)

    def _bluegreen(self, old: Sequence[SimulatedProcess], failing: str | None) -> None:
        greens: list[SimulatedProcess] = []
        deadline = time.monotonic() + GREEN_WAIT_S
        self.say(f"deploy: starting {len(old)} green Machines beside the blue ones")
        for blue in old:
            host = f"{self.rng.getrandbits(56):014x}"
            delay, slow = self._boot_delay()
            if blue.hostname == failing:
                self.say(f"  green {host} (for blue {blue.hostname}) never passes its checks")
                continue

            def started(host: str = host, slow: str = slow) -> None:
                new = self.new_process(host, NEW_RELEASE)
                greens.append(new)
                self.boot([new])
                self.say(f"  green {host}: process pid {new.pid} started{slow}")

            self.at(delay, started)

        def destroy(processes: Sequence[SimulatedProcess], what: str) -> None:
            left = {p.identity for p in processes}

            def gone(identity: str) -> None:
                left.discard(identity)
                if not left:
                    self.say(f"deploy: {what} destroyed")
                    self.deploy_done.set()

            for proc in processes:
                self.stop_process(proc, then=functools.partial(gone, proc.identity))

        def watch() -> None:
            if len(greens) == len(old):
                self.say("deploy: every green passed its checks; destroying the blue Machines")
                destroy(old, "blue Machines")
            elif time.monotonic() >= deadline:
                self.deploy_failed = True
                self.say(
                    "deploy FAILED: a green Machine never passed its checks; flyctl destroys "
                    "the greens and leaves the blue Machines running, quiet"
                )
                destroy(greens, "green Machines")
            else:
                self.at(TICK_S, watch)

        self.at(TICK_S, watch)


def _waited(job: str, wall: float) -> float:
    try:
        parsed = job_time(json.loads(job)["enqueued_at"])
    except (ValueError, KeyError, TypeError):
        return 0.0
    return 0.0 if parsed is None else max(0.0, wall - parsed[0])
