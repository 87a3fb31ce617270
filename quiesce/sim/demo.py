"""``quiesce demo``: the whole deploy cycle on a private Redis and a simulated fleet.

Only the Redis and the fleet are simulated. The release command is ``quiet_run.
quiet_fleet`` with the options ``quiesce quiet`` builds, its report is ``render.
report_text``, the rejoin tracking is ``rejoin_run.RejoinWatch`` (heartbeats only: the
Machines are not Fly's) and its report ``render_rejoin.rejoin_text``: what a user sees
here is what the production commands print.

The fleet: one ``SimulatedProcess`` per Machine, heartbeating like Sidekiq (faster:
``beat_interval_s``, same protocol), fed by a producer that ``LPUSH``es Sidekiq-shaped
jobs into ``queue:default`` and worked while not quiet (the busy count its beats report
is the jobs in flight). Everything simulated runs on ONE thread (``Simulation``): the
beats, the jobs and the deploy's scheduled steps, so stopping it is one join.

The deploy, as flyctl does it (``docs/fly.md``):

* ``immediate``: Machines updated in place in batches; each old process gets the kill
  signal, finishes its jobs and leaves; a new process (same Machine id, new pid and
  nonce, the new release label) starts after a boot delay, some Machines slow.
* ``bluegreen``: a green Machine (new id) starts beside each blue one; once every green
  passed its checks the blues are destroyed (their processes finish their jobs, leave).

``fail_machine``: immediate: that Machine's new process never starts. bluegreen: that
Machine's green never passes its checks, so flyctl gives up, destroys the greens and
leaves the blues running, quiet: the fleet a failed deploy leaves behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import heapq
import itertools
import json
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

from quiesce.errors import ExitCode
from quiesce.sidekiq.keys import Keys
from quiesce.sidekiq.versions import JobTimeUnits
from quiesce.sim.simulator import SimulatedFleet, SimulatedProcess, make_processes

if TYPE_CHECKING:
    import redis

    from quiesce.model.rejoin import RejoinReport
    from quiesce.model.report import Event
    from quiesce.settings import Settings
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
    rejoin_timeout_s: float = 15.0
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
        stamp = float(json.loads(job)["enqueued_at"])
    except (ValueError, KeyError, TypeError):
        return 0.0
    return max(0.0, wall - (stamp / 1000.0 if stamp > 1e11 else stamp))


# -- metrics (the exporter, when this build has it) ---------------------------------------


@dataclasses.dataclass(slots=True)
class Metrics:
    url: str | None
    note: str
    handle: Any = None

    def close(self) -> None:
        if self.handle is None:
            return
        for name in ("close", "stop", "shutdown"):
            stop = getattr(self.handle, name, None)
            if callable(stop):
                stop()
                return


def start_metrics(settings: Settings, port: int) -> Metrics:
    """``quiesce.adapters.prometheus.serve_in_background(settings, host=, port=)`` when the exporter
    is in this build: returns a handle with ``close()`` (and ``url``, optional)."""
    try:
        from quiesce.adapters import prometheus as exporter
    except ImportError:
        return Metrics(None, "metrics: not available in this build (no quiesce exporter)")
    serve = getattr(exporter, "serve_in_background", None)
    if not callable(serve):
        return Metrics(None, "metrics: not available in this build (no exporter hook)")
    from quiesce.sim.embedded_redis import free_port

    port = port or free_port()
    handle = serve(settings, host="127.0.0.1", port=port)
    url = str(getattr(handle, "url", "") or f"http://127.0.0.1:{port}/metrics")
    return Metrics(url, f"metrics: {url} (Prometheus text, while the demo runs)", handle)


# -- the run ------------------------------------------------------------------------------


class _Printer:
    """Lines from the main thread and the simulation's, whole and in order."""

    def __init__(self, out: Callable[[str], None]) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.last_rejoin = ""

    def __call__(self, line: str) -> None:
        with self.lock:
            self.out(line)

    def rejoin(self, report: RejoinReport, remaining_s: float) -> None:
        from quiesce.views.rejoin import counts_line

        line = counts_line(report)
        if line != self.last_rejoin:
            self.last_rejoin = line
            self(f"rejoin: {line}; {max(0.0, remaining_s):.0f}s left")


def _section(say: Callable[[str], None], title: str) -> None:
    say("")
    say(f"== {title}")


@contextlib.contextmanager
def _running(sim: Simulation) -> Iterator[Simulation]:
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


def run_demo(
    options: DemoOptions,
    out: Callable[[str], None],
    *,
    on_quiet_event: Callable[[Event], None] | None = None,
    quiet_live: Callable[[], bool] = lambda: False,
) -> int:
    """The whole cycle; returns the exit status (0: the fleet came back whole, 7 not).

    ``on_quiet_event`` is the release command's progress line (``quiesce quiet``'s own),
    ``quiet_live`` whether it printed the push line. Everything started here is stopped
    before this returns, on an exception (Ctrl-C: ``KeyboardInterrupt``) too.
    """
    from quiesce.adapters.redis.connect import connect
    from quiesce.adapters.redis.store import open_stores
    from quiesce.model.report import QuietOptions
    from quiesce.runs.quiet import quiet_fleet
    from quiesce.runs.read import read_fleet
    from quiesce.runs.rejoin import RejoinOptions, RejoinWatch
    from quiesce.settings import build_settings
    from quiesce.sim.embedded_redis import start_embedded_redis
    from quiesce.views.fleet import report_text, status_text
    from quiesce.views.rejoin import rejoin_text

    say = _Printer(out)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(start_embedded_redis(options.redis))
        settings = build_settings(urls=(server.url,), environ={})
        stores = open_stores(settings)
        for store in stores:
            stack.callback(store.close)
        client = connect(settings.redis[0], settings)
        stack.callback(client.close)
        metrics = start_metrics(settings, options.metrics_port)
        stack.callback(metrics.close)

        say(f"Redis: {server.description} (private, no persistence; stopped at the end)")
        say(
            f"fleet: {options.machines} Machines, one Sidekiq {options.sidekiq_version} process "
            f"each (concurrency {options.concurrency}), a beat every {options.beat_interval_s:g}s "
            "(Sidekiq's own clock is slower: same protocol)"
        )
        say(metrics.note)
        sim = Simulation(client, stores[0].keys, options, say)
        old = [
            dataclasses.replace(
                p, tag=TAG, concurrency=options.concurrency, labels=(f"release:{OLD_RELEASE}",)
            )
            for p in make_processes(
                options.machines, version=options.sidekiq_version, seed=options.seed
            )
        ]
        sim.boot(old)
        failing = sim._failing(old)
        if failing is not None:
            say(f"injected failure: Machine {failing} (#{options.fail_machine}) will not come back")
        stack.enter_context(_running(sim))
        time.sleep(WARM_UP_S)
        sim.check()

        _section(say, "the fleet at work: quiesce status --machines")
        say(status_text(read_fleet(stores), machines_only=True))
        say(f"jobs: {sim.stats.enqueued} enqueued, {sim.stats.done} done so far")

        _section(say, f"release command: quiesce quiet --release {NEW_RELEASE} "
                 f"--strategy {options.strategy}")  # fmt: skip
        quiet_options = QuietOptions(release=NEW_RELEASE, strategy=options.strategy)
        quiet = quiet_fleet(stores, quiet_options, on_event=on_quiet_event)
        say(report_text(quiet, live=quiet_live()))
        sim.check()
        if not quiet.ok:
            return int(quiet.exit_code)

        _section(say, f"deploy ({options.strategy}), and quiesce rejoin --wait")
        sim.at(0.0, lambda: sim.deploy(old, options.strategy))
        watch = RejoinWatch(
            stores,
            None,
            RejoinOptions(
                timeout_s=options.rejoin_timeout_s,
                interval_s=POLL_S,
                fly_note="the demo's Machines are simulated",
            ),
        )

        def progress(report: RejoinReport, remaining_s: float) -> None:
            sim.check()
            say.rejoin(report, remaining_s)

        rejoined = watch.wait(progress)
        sim.deploy_done.wait(timeout=KILL_TIMEOUT_S + max(SLOW_BOOT_S) + GREEN_WAIT_S)
        sim.check()

        _section(say, "rejoin report (quiesce rejoin --wait --all)")
        say(rejoin_text(rejoined, show_all=options.machines <= 20))
        _section(say, "summary")
        stats = sim.stats
        waiting, oldest = sim.waiting()
        say(
            f"jobs: {stats.enqueued} enqueued, {stats.done} done, {waiting} waiting in "
            f"queue:{QUEUE}" + (f" (the oldest for {oldest:.1f}s)" if oldest is not None else "")
        )
        say(
            f"queue:{QUEUE} had no consumer for {stats.no_consumer_s:.1f}s; the longest a "
            f"worked job had waited: {stats.longest_wait_s:.1f}s"
        )
        if metrics.url is not None:
            say(f"metrics were served at {metrics.url} while the demo ran")
        if not rejoined.whole:
            say(
                "the fleet is NOT whole: Machines not back take no jobs. After a real "
                "`flyctl deploy`, `quiesce rejoin --wait` fails like this (exit 7), and "
                "`quiesce recover` restarts the Machines a failed deploy left quiet"
            )
        code = 0 if rejoined.whole else int(ExitCode.NOT_WHOLE)
    say(
        "cleaned up: simulated fleet stopped, "
        f"{server.description.split(' on ')[0]} stopped"
        + (", metrics server stopped" if metrics.url else "")
    )
    return code
