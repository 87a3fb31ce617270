"""Benchmark: a ``quiesce exporter`` scrape beside a per-queue exporter shaped like the Ruby ones.

Run from a checkout, with the checkout's virtualenv::

    bin/setup
    .venv/bin/python bench/exporter.py [--processes 500] [--queues 200] [--rtt-ms 10] [--runs 5]

It starts a private redis-server on a free port (never the machine's Redis) and the
latency proxy of ``bench/quiet.py`` in front of it (every client->server chunk delayed by
``--rtt-ms``; it counts *turns*, i.e. round trips, per connection). It registers
``--processes`` simulated Sidekiq 7.3.10 processes (5 threads, two queues each) and
``--queues`` queues holding 1-3 jobs, then times through the proxy, each over a
connection kept between scrapes (as a long-running exporter does), ``--runs`` scrapes
each after one warm-up scrape:

* quiesce: ``QuiesceCollector.collect()`` rendered by prometheus_client's
  ``generate_latest`` (the whole ``/metrics`` body), with the store's round-trip counter
  and the proxy's turns;
* per queue: the read pattern of Strech/sidekiq-prometheus-exporter's ``standard.rb``
  (the landscape doc, section 2.1): ``Stats`` (one pipeline), ``SSCAN`` of ``processes``
  and ``queues`` at Sidekiq's default COUNT plus one pipeline (``workers_size`` and
  ``enqueued``), then per queue a separate ``LLEN`` and a separate ``LINDEX -1``, then
  ``ProcessSet`` (``SSCAN`` + one ``HMGET`` pipeline) and ``Workers`` (``SSCAN`` + one
  ``HGETALL <id>:work`` pipeline). Job metrics and leader lookups are left out, which
  flatters it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

try:
    import redis
    from prometheus_client import generate_latest
except ModuleNotFoundError:  # the system python, not the checkout's .venv
    sys.exit("bench: run bin/setup, then: .venv/bin/python bench/exporter.py")

from quiesce.adapters.prometheus import QuiesceCollector, make_registry  # noqa: E402
from quiesce.adapters.redis.store import SidekiqStore  # noqa: E402
from quiesce.settings import build_settings  # noqa: E402
from quiesce.sidekiq import keys as k  # noqa: E402
from quiesce.sim.simulator import SimulatedFleet, make_processes  # noqa: E402

# bench/quiet.py's proxy and private Redis, by name (see its start_private_redis).
_quiet: Any = importlib.import_module("quiet")


def populate(direct: redis.Redis, url: str, processes: int, queues: int) -> None:
    names = [f"queue-{i:04d}" for i in range(queues)]
    procs = make_processes(processes, version="7.3.10", seed=processes)
    for i, proc in enumerate(procs):
        proc.queues = (names[i % queues], names[(i * 7 + 1) % queues])
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        SimulatedFleet(client, procs).beat(procs, time.time())
    finally:
        client.close()
    pipe = direct.pipeline(transaction=False)
    pipe.sadd(k.Keys().queues, *names)
    now = time.time()
    for i, name in enumerate(names):
        for j in range(1 + i % 3):
            job = {"class": "Job", "queue": name, "enqueued_at": now - 10 * (j + 1)}
            pipe.lpush(k.Keys().queue(name), json.dumps(job))
    pipe.execute()


class QuiesceScrape:
    def __init__(self, url: str) -> None:
        settings = build_settings(urls=[url])
        self.store = SidekiqStore(settings.redis[0], settings)
        self.registry = make_registry(QuiesceCollector(self.store))

    def __call__(self) -> int:
        before = self.store.round_trips
        body = generate_latest(self.registry)
        assert b"quiesce_up 1.0" in body
        return self.store.round_trips - before

    def close(self) -> None:
        self.store.close()


class PerQueueScrape:
    """The Ruby exporters' shape (see the module docstring); returns its command count."""

    def __init__(self, url: str) -> None:
        self.client: Any = redis.Redis.from_url(url, decode_responses=True)

    def _scan(self, key: str) -> list[str]:
        found: list[str] = []
        cursor = 0
        while True:
            cursor, batch = self.client.sscan(key, cursor)  # Sidekiq's default COUNT (10)
            found.extend(batch)
            if cursor == 0:
                return found

    def __call__(self) -> int:
        c = self.client
        pipe = c.pipeline(transaction=False)
        for key in ("stat:processed", "stat:failed"):
            pipe.get(key)
        for key in ("schedule", "retry", "dead"):
            pipe.zcard(key)
        pipe.scard("processes")
        pipe.lindex("queue:default", -1)
        pipe.execute()
        processes, queues = self._scan("processes"), self._scan("queues")
        pipe = c.pipeline(transaction=False)
        for p in processes:
            pipe.hget(p, "busy")
        for q in queues:
            pipe.llen(f"queue:{q}")
        pipe.execute()
        for q in self._scan("queues"):
            c.llen(f"queue:{q}")
            c.lindex(f"queue:{q}", -1)
        pipe = c.pipeline(transaction=False)
        for p in self._scan("processes"):
            pipe.hmget(p, "info", "busy", "beat", "quiet", "rss", "rtt_us")
        pipe.execute()
        pipe = c.pipeline(transaction=False)
        for p in self._scan("processes"):
            pipe.hgetall(f"{p}:work")
        pipe.execute()
        return 0

    def close(self) -> None:
        self.client.close()


def timed(scrape: Callable[[], int], proxy: Any, runs: int) -> tuple[list[float], list[int], int]:
    scrape()  # warm-up: opens the connection the following scrapes keep
    times, turns = [], []
    own = 0
    for _ in range(runs):
        before = proxy.turns()
        started = time.perf_counter()
        own = scrape()
        times.append(time.perf_counter() - started)
        turns.append(proxy.turns() - before)
    return times, turns, own


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=500)
    parser.add_argument("--queues", type=int, default=200)
    parser.add_argument("--rtt-ms", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    print("\n".join(_quiet.machine_facts()))
    print(
        f"fleet:        {args.processes} processes (7.3.10), {args.queues} queues; "
        f"rtt {args.rtt_ms:g} ms added per round trip; {args.runs} scrapes after a warm-up\n"
    )
    server = _quiet.start_private_redis()
    direct = server.client()
    proxy = _quiet.LatencyProxy(server.port, args.rtt_ms / 1000.0)
    rows = []
    try:
        populate(direct, server.url, args.processes, args.queues)
        for name, make in (
            ("quiesce exporter", QuiesceScrape),
            ("per-queue (Ruby)", PerQueueScrape),
        ):
            scrape = make(proxy.url)
            try:
                times, turns, own = timed(scrape, proxy, args.runs)
            finally:
                scrape.close()
            rows.append((name, times, turns, own))
    finally:
        try:
            proxy.stop()
            direct.close()
        finally:
            server.stop()
    header = (
        f"{'approach':<18} | {'round trips (proxy)':>19} | {'median s':>8} | "
        f"{'min s':>6} | {'max s':>6}"
    )
    print(header)
    print("-" * len(header))
    for name, times, turns, _ in rows:
        span = str(min(turns)) + ("" if min(turns) == max(turns) else f"-{max(turns)}")
        print(
            f"{name:<18} | {span:>19} | {statistics.median(times):>8.3f} | "
            f"{min(times):>6.3f} | {max(times):>6.3f}"
        )
    print(f"\nquiesce's own round-trip counter: {rows[0][3]} per scrape")
    print(f"speedup (median): {statistics.median(rows[1][1]) / statistics.median(rows[0][1]):.1f}x")


if __name__ == "__main__":
    main()
