"""Benchmark: one ``quiesce rejoin`` poll at 500 Machines.

Run from a checkout, with the checkout's virtualenv::

    bin/setup
    .venv/bin/python bench/rejoin.py [--machines 500] [--polls 20]

It starts a private redis-server on a free port (``tests.support.RedisServer``; the
machine's Redis on 6379 is never touched), registers N simulated Sidekiq processes (one
per Machine), quiets them and records a deploy as ``quiesce quiet`` does, then replaces
half of them with new processes (an ``immediate`` deploy half-way through). The Fly
Machine list is N full Machine objects (the documented shape, config and events
included) served by ``httpx.MockTransport``, so the JSON parsing is measured but no
network is.

Each poll is what ``rejoin --wait`` does once: one snapshot (``SSCAN`` + one pipeline),
one ``GET /machines``, the model, and both renderings (text and JSON). Reported: CPU time
per poll (``time.process_time``; median and max over the polls, with and without the
Fly list) and round trips (the store's counter and the Fly client's request count).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

try:
    import httpx
except ModuleNotFoundError:  # the system python, not the checkout's .venv
    sys.exit("bench: run bin/setup, then: .venv/bin/python bench/rejoin.py")

from quiesce.adapters.fly import FlyClient, FlyConfig  # noqa: E402
from quiesce.adapters.redis.store import SidekiqStore  # noqa: E402
from quiesce.model.report import QuietOptions  # noqa: E402
from quiesce.runs.quiet import quiet_fleet  # noqa: E402
from quiesce.runs.rejoin import RejoinOptions, RejoinWatch  # noqa: E402
from quiesce.settings import build_settings  # noqa: E402
from quiesce.sim.fly import machine_json  # noqa: E402
from quiesce.sim.simulator import SimulatedFleet, make_processes  # noqa: E402
from quiesce.views.rejoin import rejoin_json, rejoin_text  # noqa: E402


def start_private_redis() -> Any:
    """``tests.support.RedisServer``, imported by name (as bench/quiet.py does)."""
    return importlib.import_module("tests.support").RedisServer()


class _Clock:
    """Ten seconds pass between polls: every poll is due a Fly list."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 10.0
        return self.now


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one quiesce rejoin poll at N Machines")
    parser.add_argument("--machines", type=int, default=500)
    parser.add_argument("--polls", type=int, default=20)
    parser.add_argument("--profile", action="store_true", help="cProfile the polls")
    args = parser.parse_args(argv)
    n = args.machines

    server = start_private_redis()
    try:
        settings = build_settings(urls=(server.url,))
        store = SidekiqStore(settings.redis[0], settings)
        old = make_processes(n, seed=n)
        fleet = SimulatedFleet(server.client(decode_responses=True), old)
        fleet.beat(old, time.time())
        # quiesce quiet --no-wait, then the processes take TSTP on their next beat.
        quiet_fleet([store], QuietOptions(wait=False, mark=False, strategy="immediate"))
        for proc, signal in zip(old, fleet.beat(old, time.time()), strict=True):
            proc.handle(signal)  # popped TSTP: reports quiet on the next beat
        fleet.beat(old, time.time())
        new = [
            dataclasses.replace(p, identity=f"{p.hostname}:2:new{i:09x}", pid=2, quiet=False)
            for i, p in enumerate(old[: n // 2])
        ]
        fleet.leave(old[: n // 2])
        for p in new:
            p.started_at = time.time()
            p.signals_seen = []
            p._info = None
        fleet.beat(new, time.time())

        body = json.dumps([machine_json(p.hostname) for p in old]).encode()
        fly = FlyClient(
            FlyConfig(app="my-app", token="bench", base_url="https://api.machines.dev"),
            transport=httpx.MockTransport(lambda r: httpx.Response(200, content=body)),
        )
        if args.profile:
            import cProfile

            watch = RejoinWatch([store], fly, RejoinOptions(), clock=_Clock())
            cProfile.runctx(
                "for _ in range(5): watch.poll(None)", globals(), locals(), sort="cumtime"
            )
        results = {}
        for label, client in (("heartbeats + Fly list", fly), ("heartbeats alone", None)):
            watch = RejoinWatch([store], client, RejoinOptions(), clock=_Clock())
            cpu, trips, calls = [], [], []
            report = None
            for _ in range(args.polls):
                rt0, fc0 = store.round_trips, fly.calls
                t0 = time.process_time()
                report = watch.poll(None)
                rejoin_text(report)
                json.dumps(rejoin_json(report))
                cpu.append(time.process_time() - t0)
                trips.append(store.round_trips - rt0)
                calls.append(fly.calls - fc0)
            assert report is not None
            results[label] = (cpu, trips, calls, report)
        fly.close()
        store.close()
    finally:
        server.stop()

    print(f"machines: {n} (one Sidekiq 7.3.10 process each), polls: {args.polls}")
    print(f"Fly list body: {len(body) / 1024:.0f} KiB ({n} full Machine objects)")
    for label, (cpu, trips, calls, report) in results.items():
        counts = {s.value: c for s, c in report.counts().items() if c}
        print(
            f"{label:<22} CPU/poll median {statistics.median(cpu) * 1000:6.1f} ms, "
            f"max {max(cpu) * 1000:6.1f} ms; Redis round trips/poll {sorted(set(trips))}; "
            f"Fly requests/poll {sorted(set(calls))}"
        )
        print(f"{'':<22} report: {report.back} of {report.expected} back, {counts}")


if __name__ == "__main__":
    main()
