"""Benchmark: N Prometheus servers scraping one ``quiesce exporter`` at the same moment.

Run from a checkout, with the checkout's virtualenv::

    .venv/bin/python bench/exporter_concurrent.py [--queues 10000] [--scrapes 20] [--runs 3]

Starts a private redis-server on a free port (never the machine's Redis) with
``--queues`` queues and a few simulated processes, serves the exporter on a free port,
then fires ``--scrapes`` concurrent ``GET /metrics`` ``--runs`` times. Prints per run:
the wall time of the burst, the slowest scrape, how many answered ``quiesce_up 1``, and
the Redis round trips the burst cost (single flight: concurrent scrapes share one read).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

try:
    import redis  # noqa: F401
except ModuleNotFoundError:  # the system python, not the checkout's .venv
    sys.exit("bench: run bin/setup, then: .venv/bin/python bench/exporter_concurrent.py")

from quiesce.adapters.prometheus import ExporterServer, QuiesceCollector, serve  # noqa: E402
from quiesce.adapters.redis.store import SidekiqStore  # noqa: E402
from quiesce.settings import build_settings  # noqa: E402
from quiesce.sim.simulator import SimulatedFleet, make_processes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queues", type=int, default=10_000)
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    server: Any = importlib.import_module("tests.support").RedisServer()
    try:
        url = server.url
        settings = build_settings(urls=[url])
        procs = make_processes(6, version="7.3.10", seed=1)
        fleet = SimulatedFleet(server.client(), procs)
        fleet.beat(procs, time.time())
        client = server.client()
        pipe = client.pipeline(transaction=False)
        pipe.sadd("queues", *(f"queue_{i:05d}" for i in range(args.queues)))
        for i in range(0, args.queues, 5):
            pipe.lpush(f"queue:queue_{i:05d}", '{"class":"X","enqueued_at":1700000000.0}')
        pipe.execute()
        store = SidekiqStore(settings.redis[0], settings)
        exporter = ExporterServer(("127.0.0.1", 0), QuiesceCollector(store))
        stop = threading.Event()
        thread = threading.Thread(target=serve, args=(exporter, stop))
        thread.start()
        try:
            print(
                f"{args.scrapes} concurrent scrapes, {args.queues} queues, {len(procs)} processes"
            )
            for run in range(args.runs):
                burst(exporter.url, store, args.scrapes, run)
        finally:
            stop.set()
            thread.join()
            store.close()
    finally:
        server.stop()


def burst(url: str, store: SidekiqStore, n: int, run: int) -> None:
    times: list[float] = []
    up: list[bool] = []
    lock = threading.Lock()

    def one() -> None:
        start = time.perf_counter()
        with urllib.request.urlopen(f"{url}/metrics", timeout=60) as response:
            body = response.read().decode()
        with lock:
            times.append(time.perf_counter() - start)
            up.append("\nquiesce_up 1.0\n" in body)

    before = store.round_trips
    start = time.perf_counter()
    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    print(
        f"run {run + 1}: burst {wall:.2f}s, slowest scrape {max(times):.2f}s, "
        f"{sum(up)}/{n} quiesce_up 1, {store.round_trips - before} Redis round trips"
    )


if __name__ == "__main__":
    main()
