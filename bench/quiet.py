"""Benchmark: the signalling phase of ``quiesce quiet`` against a per-process loop.

Run from a checkout, with the checkout's virtualenv (``bin/setup`` makes ``.venv`` with
quiesce's dependencies and installs ``redis-server``)::

    bin/setup
    .venv/bin/python bench/quiet.py [--sizes 100,500,2000] [--rtt-ms 10] [--cold-start-runs 10]

It starts a private redis-server on a free port (``tests.support.RedisServer``; the
machine's Redis on 6379 is never touched) and a threaded TCP proxy in front of it that
delays every client-to-server chunk by ``--rtt-ms`` (scheduled at arrival time + RTT, in
order, so a pipeline split over several TCP chunks costs one RTT, not one per chunk).
The proxy counts *turns*: per connection, the first send plus every send that follows
a reply from the server. Turns include any connection handshake commands; the TCP
handshake itself is not delayed (a real network adds one RTT per new connection). The
count is exact while the RTT exceeds the time a client takes to write one pipeline: at
``--rtt-ms 0`` replies can reach a client still writing, and a big pipeline counts twice.

For each fleet size N it registers N simulated processes directly on the server, then
times through the proxy:

* quiesce: ``quiet_fleet(..., QuietOptions(wait=False, mark=False))``, i.e. ``quiesce quiet
  --no-wait --no-mark``: snapshot, decode, plan, and one pipeline with every push plus the
  deploy record; what ``quiesce quiet`` does before it waits; reported with the store's
  ``round_trips`` counter, the proxy's turns, and the same run without the proxy (the
  client-side CPU cost alone); quiesce runs 5 times per N, the median is shown.
* per process: the shape of ``Sidekiq::ProcessSet.new.each(&:quiet!)`` when the cleanup
  lock is already held (that ``SET NX`` check is not sent): ``SSCAN`` with the default
  COUNT until cursor 0, one pipeline of ``HMGET`` per member, then one ``MULTI LPUSH
  EXPIRE 60 EXEC`` per process, with redis-py's default handshake (4 setup turns on
  redis-py 8; Sidekiq's redis-client pipelines its connection prelude).

Each run starts from fresh heartbeats and no ``*-signals`` lists, and is checked
afterwards: every process must hold exactly one TSTP. Finally it times the CLI's cold
start (``python -m quiesce --help``, and ``bin/quiesce --help`` if that is executable).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import multiprocessing
import os
import platform
import queue
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

try:
    import redis
except ModuleNotFoundError:  # the system python, not the checkout's .venv
    sys.exit("bench: run bin/setup, then: .venv/bin/python bench/quiet.py")

from quiesce.adapters.redis.store import SidekiqStore  # noqa: E402
from quiesce.model.quiet import Outcome  # noqa: E402
from quiesce.model.report import QuietOptions  # noqa: E402
from quiesce.runs.quiet import quiet_fleet  # noqa: E402
from quiesce.settings import build_settings  # noqa: E402
from quiesce.sidekiq import keys as k  # noqa: E402
from quiesce.sim.simulator import SimulatedFleet, SimulatedProcess, make_processes  # noqa: E402

CHUNK = 65536
QUIESCE_RUNS = 5
SIDEKIQ_FIELDS = ("info", "busy", "beat", "quiet", "rss", "rtt_us")
"""What ``ProcessSet#each`` reads per process (Sidekiq 7.x)."""


def start_private_redis() -> Any:
    """A ``tests.support.RedisServer``, imported by name: ``mypy --strict bench`` would
    otherwise follow it and report tests/support.py's stale type-ignores as ours."""
    return importlib.import_module("tests.support").RedisServer()


class _Link:
    """One proxied connection: client -> (delayed) -> server, server -> client at once."""

    def __init__(
        self, client: socket.socket, upstream: socket.socket, rtt_s: float, turns: Any
    ) -> None:
        self.client, self.upstream, self.rtt_s = client, upstream, rtt_s
        self.turns = turns
        self._replied = True  # the first send is a turn
        self._lock = threading.Lock()
        self._pending: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
        self.threads = [
            threading.Thread(target=fn, daemon=True)
            for fn in (self._from_client, self._deliver, self._from_server)
        ]
        for thread in self.threads:
            thread.start()

    def _from_client(self) -> None:
        try:
            while data := self.client.recv(CHUNK):
                arrived = time.monotonic()
                with self._lock:
                    if self._replied:
                        with self.turns.get_lock():
                            self.turns.value += 1
                        self._replied = False
                self._pending.put((arrived + self.rtt_s, data))
        except OSError:
            pass
        finally:
            self._pending.put(None)

    def _deliver(self) -> None:
        while (item := self._pending.get()) is not None:
            due, data = item
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                self.upstream.sendall(data)
            except OSError:
                break
        _shutdown(self.upstream, socket.SHUT_WR)

    def _from_server(self) -> None:
        try:
            while data := self.upstream.recv(CHUNK):
                with self._lock:
                    self._replied = True
                self.client.sendall(data)
        except OSError:
            pass
        finally:
            _shutdown(self.client, socket.SHUT_WR)

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            _shutdown(sock, socket.SHUT_RDWR)
        for thread in self.threads:
            thread.join(timeout=2)
        self.client.close()
        self.upstream.close()


def _shutdown(sock: socket.socket, how: int) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(how)


class LatencyProxy:
    """127.0.0.1:<free port> -> 127.0.0.1:``target_port``, adding ``rtt_s`` per round trip.

    It runs in a child process, so its threads never compete with the measured client
    for the interpreter lock (a real network costs the client nothing but the wait).
    """

    def __init__(self, target_port: int, rtt_s: float) -> None:
        self.target_port, self.rtt_s = target_port, rtt_s
        context = multiprocessing.get_context("fork")
        self._turns: Any = context.Value("q", 0)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._process = context.Process(target=self._accept, name="latency-proxy", daemon=True)
        self._process.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def turns(self) -> int:
        return int(self._turns.value)

    def _accept(self) -> None:  # in the child process, until stop() terminates it
        links: list[_Link] = []
        while True:
            client, _ = self._listener.accept()
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            links.append(_Link(client, upstream, self.rtt_s, self._turns))

    def stop(self) -> None:
        self._process.terminate()
        self._process.join(timeout=2)
        self._listener.close()


# -- the two contenders ------------------------------------------------------------
def open_store(url: str) -> SidekiqStore:
    settings = build_settings(urls=[url])
    return SidekiqStore(settings.redis[0], settings)


def run_quiesce(url: str) -> int:
    """What ``quiesce quiet`` does before waiting; returns the store's round-trip count."""
    store = open_store(url)
    try:
        report = quiet_fleet([store], QuietOptions(wait=False, mark=False))
        assert report.count(Outcome.SIGNALLED) == len(report.entries)
        return store.round_trips
    finally:
        store.close()


def run_per_process(url: str) -> int:
    """``ProcessSet.new.each(&:quiet!)`` shape; returns how many SSCAN calls it made."""
    client: Any = redis.Redis.from_url(url, decode_responses=True)
    try:
        members: set[str] = set()
        cursor, scans = 0, 0
        while True:
            cursor, batch = client.sscan("processes", cursor)
            scans += 1
            members.update(batch)
            if cursor == 0:
                break
        ordered = sorted(members)
        pipe = client.pipeline(transaction=False)
        for member in ordered:
            pipe.hmget(member, SIDEKIQ_FIELDS)
        rows = pipe.execute()
        for member, row in zip(ordered, rows, strict=True):
            if row[0] is None:  # Sidekiq skips a member whose hash has gone
                continue
            tx = client.pipeline(transaction=True)
            tx.lpush(f"{member}-signals", "TSTP")
            tx.expire(f"{member}-signals", k.SIGNAL_TTL_S)
            tx.execute()
        return scans
    finally:
        client.close()


# -- measurement ---------------------------------------------------------------------
def prepare(direct: redis.Redis, url: str, beats: list[SimulatedProcess]) -> None:
    """Fresh heartbeats for every process and no signal lists: each run starts equal."""
    stale = list(direct.scan_iter(match="*-signals", count=1000))
    if stale:
        direct.delete(*stale)
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        SimulatedFleet(client, beats).beat(beats, time.time())
    finally:
        client.close()


def verify(direct: redis.Redis, identities: list[str]) -> None:
    pipe = direct.pipeline(transaction=False)
    for ident in identities:
        pipe.lrange(f"{ident}-signals", 0, -1)
    bad = [i for i, got in zip(identities, pipe.execute(), strict=True) if got != [b"TSTP"]]
    if bad:
        raise SystemExit(f"{len(bad)} processes did not get exactly one TSTP, e.g. {bad[0]}")


def measure(fn: Callable[[str], int], proxy: LatencyProxy) -> tuple[int, int, float]:
    """(fn's own count, proxy turns, wall seconds) for one run through the proxy."""
    before = proxy.turns()
    started = time.perf_counter()
    own = fn(proxy.url)
    return own, proxy.turns() - before, time.perf_counter() - started


def time_quiesce(
    direct: redis.Redis,
    url: str,
    proxy: LatencyProxy,
    beats: list[SimulatedProcess],
    idents: list[str],
) -> tuple[str, str, float, float]:
    """quiesce's round trips and turns (``3``, or ``3-4`` if runs disagreed) and median
    seconds through the proxy and straight to Redis: short runs are noisy."""
    rts, turns, proxied, straight = [], [], [], []
    for _ in range(QUIESCE_RUNS):
        prepare(direct, url, beats)
        rt, turn, elapsed = measure(run_quiesce, proxy)
        rts.append(rt)
        turns.append(turn)
        proxied.append(elapsed)
        verify(direct, idents)
        prepare(direct, url, beats)
        started = time.perf_counter()
        run_quiesce(url)
        straight.append(time.perf_counter() - started)
        verify(direct, idents)

    def span(values: list[int]) -> str:
        return str(min(values)) + ("" if min(values) == max(values) else f"-{max(values)}")

    return span(rts), span(turns), statistics.median(proxied), statistics.median(straight)


def cold_start(argv: list[str], runs: int) -> str:
    times: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, check=False)
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            return f"failed (exit {done.returncode}): {done.stderr.decode()[-200:]!r}"
    return f"min {min(times) * 1000:7.1f} ms   median {statistics.median(times) * 1000:7.1f} ms"


def machine_facts() -> list[str]:
    version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"nproc:        {cpus}",
        f"python:       {platform.python_version()} ({sys.executable})",
        f"redis-py:     {redis.__version__}",
        f"redis-server: {version}",
        f"command:      {shlex.join(sys.orig_argv)}",
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", default="100,500,2000", help="fleet sizes, comma-separated")
    parser.add_argument("--rtt-ms", type=float, default=10.0, help="round-trip latency added")
    parser.add_argument("--cold-start-runs", type=int, default=10, help="runs per CLI timing")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print("\n".join(machine_facts()))
    print(f"rtt:          {args.rtt_ms:g} ms added by the proxy to every client->server chunk\n")
    header = (
        f"{'N':>5} | {'quiesce RT (counter)':>20} | {'quiesce turns (proxy)':>21} | "
        f"{'quiesce s':>9} | {'(no proxy)':>10} | {'per-process turns':>17} | "
        f"{'per-process s':>13} | {'speedup':>7}"
    )
    notes: list[str] = []
    server = start_private_redis()
    direct = server.client()
    proxy = LatencyProxy(server.port, args.rtt_ms / 1000.0)
    try:
        print(header)
        print("-" * len(header))
        for n in args.sizes:
            direct.flushdb()
            procs = make_processes(n, seed=n)
            beats = procs
            identities = [p.identity for p in procs]

            q_rts, q_turns, q_s, q_direct_s = time_quiesce(
                direct, server.url, proxy, beats, identities
            )

            prepare(direct, server.url, beats)
            scans, p_turns, p_s = measure(run_per_process, proxy)
            verify(direct, identities)

            print(
                f"{n:>5} | {q_rts:>20} | {q_turns:>21} | {q_s:>9.3f} | "
                f"{q_direct_s:>10.3f} | "
                f"{p_turns:>17} | {p_s:>13.3f} | {p_s / q_s:>6.1f}x",
                flush=True,
            )
            notes.append(
                f"N={n}: {scans} SSCAN + 1 HMGET pipeline + {n} MULTI/EXEC"
                f" + {p_turns - scans - 1 - n} handshake"
            )
    finally:
        try:
            proxy.stop()
            direct.close()
        finally:
            server.stop()
    print("\nquiesce turns - RT counter = handshake turns (expect 0: RESP2, no CLIENT SETINFO)")
    print("per-process turns: " + "\n                   ".join(notes))
    print(f"quiesce s: median of {QUIESCE_RUNS} runs (a-b: runs disagreed); per-process: 1 run")
    print("(no proxy): quiesce straight to Redis, no added RTT: the client-side CPU cost")
    print("every run verified: each process holds exactly one TSTP afterwards\n")
    print(f"cold start ({args.cold_start_runs} runs each):")
    script = ROOT / "bin" / "quiesce"
    for cmd in ([sys.executable, "-m", "quiesce", "--help"], [str(script), "--help"]):
        if cmd[0] == str(script) and not (script.is_file() and os.access(script, os.X_OK)):
            print(f"  {script}: not present or not executable, skipped")
        else:
            print(f"  {shlex.join(cmd)}\n      {cold_start(cmd, args.cold_start_runs)}")


if __name__ == "__main__":
    main()
