"""Benchmark: every read command and the release command at 10,000 processes and queues.

Run from a checkout, with the checkout's virtualenv::

    bin/setup
    .venv/bin/python bench/load.py [--processes 10000] [--queues 10000] [--profile status]

It starts a private redis-server on a free port (``tests.support.RedisServer``; never
the machine's Redis on 6379), registers ``--processes`` simulated Sidekiq 7.3.10
processes (10 threads, tag ``app``, one label, two queues each) and ``--queues`` queues
holding one job each, written straight into Redis. Then it runs, each as its own
``python -m quiesce`` child process (so the figures include Python's start-up, as an
operator sees them):

* ``quiet --no-wait --no-mark`` (signals every process and writes the deploy record);
* ``status``, ``status --json`` (which read that record too);
* ``rejoin`` (one poll against that record, Fly API off);
* one exporter scrape (``QuiesceCollector`` rendered by prometheus_client, as
  ``GET /metrics`` does).

For each it prints the wall time, the CPU time (user + system) and the child's peak
RSS (``os.wait4``'s ``ru_maxrss``), then the deploy record's size (``STRLEN`` of the
latest record; two keys hold it, each for 14 days). ``--profile COMMAND`` runs that
command once in this process under cProfile and prints the 30 functions that took the
most time themselves.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import io
import json
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

try:
    import redis
except ModuleNotFoundError:  # the system python, not the checkout's .venv
    sys.exit("bench: run bin/setup, then: .venv/bin/python bench/load.py")

from quiesce.sidekiq import keys as k  # noqa: E402
from quiesce.sim.simulator import SimulatedFleet, make_processes  # noqa: E402

_SCRAPE = """
import sys
from prometheus_client import generate_latest
from quiesce.adapters.prometheus import QuiesceCollector, make_registry
from quiesce.settings import build_settings
from quiesce.adapters.redis.store import SidekiqStore
settings = build_settings(urls=[sys.argv[1]])
store = SidekiqStore(settings.redis[0], settings)
body = generate_latest(make_registry(QuiesceCollector(store)))
sys.exit(0 if b"quiesce_up 1.0" in body else 1)
"""


def populate(url: str, processes: int, queues: int) -> None:
    names = [f"queue-{i:05d}" for i in range(queues)]
    procs = make_processes(processes, version="7.3.10", seed=processes, concurrency=10)
    for i, proc in enumerate(procs):
        proc.queues = (names[i % queues], names[(i * 7 + 1) % queues])
        proc.tag = "app"
        proc.labels = ("worker",)
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        SimulatedFleet(client, procs).beat(procs, time.time())
        now = time.time()
        for start in range(0, queues, 1000):
            pipe = client.pipeline(transaction=False)
            batch = names[start : start + 1000]
            pipe.sadd(k.Keys().queues, *batch)
            for name in batch:
                job = {"class": "Job", "queue": name, "jid": name, "enqueued_at": now - 10}
                pipe.lpush(k.Keys().queue(name), json.dumps(job))
            pipe.execute()
    finally:
        client.close()


def commands(url: str) -> list[tuple[str, list[str]]]:
    cli = [sys.executable, "-m", "quiesce", "--redis-url", url]
    return [
        ("quiet --no-wait --no-mark", [*cli, "quiet", "--no-wait", "--no-mark"]),
        ("status", [*cli, "status"]),
        ("status --json", [*cli, "status", "--json"]),
        ("rejoin (one poll)", [*cli, "rejoin", "--no-fly"]),
        ("exporter scrape", [sys.executable, "-c", _SCRAPE, url]),
    ]


def measure(argv: list[str]) -> tuple[float, float, float, int]:
    """``(wall s, CPU s, peak RSS MB, exit code)`` of one child process (CPU: user + system,
    which a busy machine disturbs less than the wall time)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    started = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    err = child.stderr.read().decode(errors="replace") if child.stderr else ""
    if child.stderr:
        child.stderr.close()
    if child.returncode not in (0, 3, 7):  # 3/7: not confirmed / not whole (nothing runs)
        print(f"  {argv[4:]} exited {child.returncode}: {err.strip()[:300]}", file=sys.stderr)
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, child.returncode


def fill_history(url: str, earlier: int) -> None:
    """``earlier`` deploys of the same scope before the measured ones: one real quiet, its
    record copied under older ids and times (writing them straight in keeps every copy
    full-size: the simulated heartbeats are not refreshed, so real runs a minute apart
    would find a shrinking fleet)."""
    measure(commands(url)[0][1])
    direct = redis.Redis.from_url(url, decode_responses=True)
    try:
        ledger = k.Keys().ledger("redis-ns:")
        (body,) = direct.hvals(ledger)
        for i in range(1, earlier):
            data = json.loads(body)
            data["deploy_id"] = f"{data['deploy_id']}-earlier{i:02d}"
            data["started_at"] -= i * 3600
            direct.hset(ledger, data["deploy_id"], json.dumps(data, separators=(",", ":")))
    finally:
        direct.close()


def profile(url: str, name: str) -> None:
    from typer.testing import CliRunner

    from quiesce.cli.app import app

    argv = {c: a[5:] for c, a in commands(url) if a[1] == "-m"}[name]
    profiler = cProfile.Profile()
    profiler.enable()
    result = CliRunner().invoke(app, ["--redis-url", url, *argv])
    profiler.disable()
    print(f"profile of {name!r}: exit {result.exit_code}")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
    print(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=10_000)
    parser.add_argument("--queues", type=int, default=10_000)
    parser.add_argument("--profile", metavar="COMMAND", help="e.g. 'status' or 'status --json'")
    parser.add_argument(
        "--history",
        type=int,
        default=1,
        metavar="N",
        help="Deploys in the ledger when the reads run (each a full record: every read "
        "command reads the whole history). Default 1; the ledger keeps 20.",
    )
    args = parser.parse_args()
    server: Any = importlib.import_module("tests.support").RedisServer()
    try:
        url = server.url
        started = time.perf_counter()
        populate(url, args.processes, args.queues)
        print(
            f"{args.processes:,} processes, {args.queues:,} queues"
            f" (populated in {time.perf_counter() - started:.1f} s), redis-server :{server.port}"
        )
        if args.profile:
            if args.profile != "quiet --no-wait --no-mark":
                measure(commands(url)[0][1])  # the deploy record the others read
            profile(url, args.profile)
            return
        if args.history > 1:
            fill_history(url, args.history - 1)
        print(f"{'command':<28}{'wall s':>8}{'CPU s':>8}{'peak RSS MB':>13}{'exit':>6}")
        for name, argv in commands(url):
            wall, cpu, rss, code = measure(argv)
            print(f"{name:<28}{wall:>8.2f}{cpu:>8.2f}{rss:>13.0f}{code:>6}")
        direct = redis.Redis.from_url(url)
        try:
            size = int(direct.strlen(k.Keys().latest_deploy))
            ttl = int(direct.ttl(k.Keys().latest_deploy))
            copies = len(list(direct.scan_iter(match="quiesce:deploy:*", count=1000)))
            ledger = k.Keys().ledger("redis-ns:")
            kept = [len(v) for v in direct.hvals(ledger)]  # as the last write left it
        finally:
            direct.close()
        print(
            f"deploy record: {size:,} bytes ({size / args.processes:.0f} per process),"
            f" {copies} keys, TTL {ttl / 86400:.0f} days"
        )
        print(f"ledger: {len(kept)} records, {sum(kept):,} bytes (read by every command above)")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
