"""Benchmark: quiesce beside Sidekiq's own Ruby API, same Redis, same run, whole processes.

Run from a checkout, with the checkout's virtualenv (Debian's ruby-sidekiq on PATH)::

    bin/setup
    .venv/bin/python bench/compare.py [--sizes 100,1000,10000] [--runs 3] [--no-ruby]

It starts a private redis-server on a free port (``tests.support.RedisServer``; never
the machine's Redis on 6379) and, for each size N, registers N simulated Sidekiq 7.3.10
heartbeats (``bench/load.py``'s ``populate``: 10 threads, two queues each; Sidekiq
6.4.1's ``ProcessSet`` reads these hashes as it reads its own) and N queues holding one
job each. Each command then runs as its own child process (start-up included, as an operator
sees it), every command once per round, ``--runs`` rounds (interleaved: on a shared
machine both sides get the same load); the best wall time is kept, with that run's CPU
time (user + system) and peak RSS (both from ``/usr/bin/time``):

* ``status --json`` vs ``Sidekiq::ProcessSet.new.map { its attributes }`` +
  ``JSON.generate`` (the listing);
* ``quiet --no-wait --no-mark`` vs ``Sidekiq::ProcessSet.new.each(&:quiet!)`` (the
  signal keys and quiesce's own keys are deleted before every run of either, so each
  run signals the whole fleet from the same state);
* one exporter scrape (``QuiesceCollector`` rendered by prometheus_client, as
  ``GET /metrics`` does) vs the Ruby listing;
* ``status`` (text) and one ``rejoin`` poll (``--no-fly``), against ``status --json``.

The floor, measured in the same rounds: ``python -c pass``, ``quiesce --version``, a
child process doing only ``status``'s read with redis-py + hiredis (SSCAN, then one
pipeline of the same HMGET/PTTL/LRANGE commands, replies parsed and dropped), and the
same read sent as pre-packed RESP over a socket and parsed by hiredis; plus the time
redis-server itself spent on the commands of one ``status --json`` (``INFO
commandstats``, reset before).

Round trips are counted on the wire by ``tests.support.RoundTripProxy`` (connection
set-up apart), for quiesce at every size and for Ruby up to ``--ruby-round-trips-max``
processes (each Ruby exchange is held ``--ruby-hold-s`` by the proxy).

Last, the deploy ledger: every key quiesce wrote under its own prefix after the runs,
with its type and size in bytes (generic: strings, lists, hashes, sets, sorted sets),
so the figure stays right whatever the record format becomes.

``--profile COMMAND`` runs one quiesce command in this process under cProfile at the
largest size and prints the 30 functions with the most time of their own.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import importlib
import io
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

try:
    import redis
except ModuleNotFoundError:  # the system python, not the checkout's .venv
    sys.exit("bench: run bin/setup, then: .venv/bin/python bench/compare.py")

from quiesce.sidekiq import keys as k  # noqa: E402

_load: Any = importlib.import_module("load")  # bench/load.py: populate, the scrape script

TIME = "/usr/bin/time"
RUBY_PRELUDE = 'require "sidekiq"; require "sidekiq/api"; require "json"; '
RUBY_LIST = (
    RUBY_PRELUDE
    + "STDOUT.write(JSON.generate(Sidekiq::ProcessSet.new.map { |p| "
    + "p.instance_variable_get(:@attribs) }))"
)
RUBY_QUIET = RUBY_PRELUDE + "Sidekiq::ProcessSet.new.each(&:quiet!)"

_FLOOR = """
import sys, time, redis
url, fields = sys.argv[1], sys.argv[2].split(",")
started = time.perf_counter()
c = redis.Redis.from_url(url, protocol=2)
members, cursor = [], 0
while True:
    cursor, batch = c.sscan("processes", cursor, count=10000)
    members.extend(batch)
    if cursor == 0:
        break
pipe = c.pipeline(transaction=False)
for m in members:
    pipe.hmget(m, fields)
    pipe.pttl(m)
    pipe.lrange(m + b"-signals", 0, -1)
replies = pipe.execute()
print(f"{time.perf_counter() - started:.4f}")
"""

_RAW = """
import socket, sys, time, hiredis
host, port, fields = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
started = time.perf_counter()
sock = socket.create_connection((host, port))
reader = hiredis.Reader()
def send(commands):
    sock.sendall(b"".join(hiredis.pack_command(c) for c in commands))
    replies = []
    while len(replies) < len(commands):
        reply = reader.gets()
        if reply is False:
            reader.feed(sock.recv(1 << 20))
        else:
            replies.append(reply)
    return replies
members, cursor = [], b"0"
while True:
    cursor, batch = send([("SSCAN", "processes", cursor, "COUNT", 10000)])[0]
    members.extend(batch)
    if cursor == b"0":
        break
commands = []
for m in members:
    commands.append(("HMGET", m, *fields))
    commands.append(("PTTL", m))
    commands.append(("LRANGE", m + b"-signals", 0, -1))
send(commands)
print(f"{time.perf_counter() - started:.4f}")
"""


@dataclasses.dataclass(frozen=True)
class Run:
    wall: float
    cpu: float
    rss_mb: float
    code: int
    out: str = ""


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    argv: Callable[[str], list[str]]
    ruby: bool = False
    writes: bool = False
    floor: bool = False
    """Not a command of either tool: what they are measured against (stdout: the read's
    own time, for the reads)."""


def quiesce(*args: str) -> Callable[[str], list[str]]:
    return lambda url: [sys.executable, "-m", "quiesce", "--redis-url", url, *args]


def ruby(script: str) -> Callable[[str], list[str]]:
    return lambda url: ["ruby", "-e", script]


COMMANDS = [
    Command("status --json", quiesce("status", "--json")),
    Command("ruby listing", ruby(RUBY_LIST), ruby=True),
    Command("quiet --no-wait --no-mark", quiesce("quiet", "--no-wait", "--no-mark"), writes=True),
    Command("ruby quiet loop", ruby(RUBY_QUIET), ruby=True, writes=True),
    Command("exporter scrape", lambda url: [sys.executable, "-c", _load._SCRAPE, url]),
    Command("status", quiesce("status")),
    Command("rejoin (one poll)", quiesce("rejoin", "--no-fly")),
    Command("python -c pass", lambda url: [sys.executable, "-c", "pass"], floor=True),
    Command("quiesce --version", quiesce("--version"), floor=True),
    Command(
        "floor: redis-py read",
        lambda url: [sys.executable, "-c", _FLOOR, url, ",".join(k.PROCESS_FIELDS)],
        floor=True,
    ),
    Command(
        "floor: raw RESP read",
        lambda url: [sys.executable, "-c", _RAW, *_host_port(url), ",".join(k.PROCESS_FIELDS)],
        floor=True,
    ),
]


def _host_port(url: str) -> list[str]:
    parts = urllib.parse.urlsplit(url)
    return [parts.hostname or "127.0.0.1", str(parts.port or 6379)]


def measure(argv: list[str], url: str, *, capture: bool = False) -> Run:
    """One child process under ``/usr/bin/time`` (the peak RSS of a forked child read
    through ``wait4`` would include this bench's own pages, copied before ``exec``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "RUBY"))}
    env.update(PYTHONPATH=str(ROOT), NO_COLOR="1", REDIS_URL=url)
    with tempfile.TemporaryDirectory() as tmp:
        usage_file, err_file = Path(tmp, "usage"), Path(tmp, "err")
        with err_file.open("wb") as err:
            started = time.perf_counter()
            done = subprocess.run(
                [TIME, "-o", str(usage_file), "-f", "%M %U %S", *argv],
                stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                stderr=err,
                env=env,
                check=False,
            )
            wall = time.perf_counter() - started
        usage = usage_file.read_text().split()
        text = err_file.read_text(errors="replace")
    code = done.returncode
    if code not in (0, 3, 7):  # 3/7: not confirmed / not whole (nothing runs)
        print(f"  {' '.join(argv)[:80]} exited {code}: {text.strip()[:300]}", file=sys.stderr)
    rss_kib, user, system = (float(x) for x in usage[-3:])
    out = done.stdout.decode() if capture else ""
    return Run(wall, user + system, rss_kib / 1024, code, out)


def best(runs: Sequence[Run]) -> Run:
    return min(runs, key=lambda r: r.wall)


def refresh(client: redis.Redis) -> None:
    """One heartbeat's worth for every registered process (``beat`` now, ``EXPIRE 60``):
    a 10,000-process run outlasts the 60 s TTL of hashes beaten only once."""
    members = list(client.sscan_iter("processes", count=10_000))
    now = f"{time.time():.3f}"
    for start in range(0, len(members), 5_000):
        batch = members[start : start + 5_000]
        pipe = client.pipeline(transaction=False)
        for identity in batch:
            pipe.expire(identity, k.HEARTBEAT_TTL_S)
        if not all(pipe.execute()):  # HSET would leave a hash holding only ``beat``
            sys.exit("bench: heartbeats expired between two refreshes; the figures are void")
        pipe = client.pipeline(transaction=False)
        for identity in batch:
            pipe.hset(identity, "beat", now)
        pipe.execute()


def reset_writes(client: redis.Redis) -> None:
    """Before each quiet run: no pending signal, no quiesce key (the same start for both)."""
    doomed = [
        key
        for pattern in ("*-signals", "quiesce:*", "deploylock-*", "process_cleanup")
        for key in client.scan_iter(match=pattern, count=10_000)
    ]
    for start in range(0, len(doomed), 10_000):
        client.delete(*doomed[start : start + 10_000])


def run_size(
    url: str, client: redis.Redis, runs: int, use_ruby: bool, only: Sequence[str] = ()
) -> dict[str, Run]:
    """Every command once per round, ``runs`` rounds: on a shared machine the load
    changes by the second, and interleaving gives each side the same weather. The best
    wall time is kept (with the CPU time of that same run)."""
    got: dict[str, list[Run]] = {}
    commands = [c for c in COMMANDS if (use_ruby or not c.ruby) and (not only or c.name in only)]
    for _ in range(runs):
        dirty = True
        for command in commands:
            if command.writes:
                reset_writes(client)
            elif dirty:  # the read commands read what one quiesce quiet leaves behind
                prepare_reads(url, client)
            dirty = command.writes
            refresh(client)
            run = measure(command.argv(url), url, capture=command.floor)
            got.setdefault(command.name, []).append(run)
    return {name: best(runs_of) for name, runs_of in got.items()}


def prepare_reads(url: str, client: redis.Redis) -> None:
    reset_writes(client)
    refresh(client)
    measure(quiesce("quiet", "--no-wait", "--no-mark")(url), url)


def round_trips(
    port: int, client: redis.Redis, n: int, use_ruby: bool, ruby_max: int, ruby_hold_s: float
) -> dict[str, int]:
    support: Any = importlib.import_module("tests.support")
    counts: dict[str, int] = {}
    for command in COMMANDS:
        is_ruby = command.ruby
        if command.floor or (is_ruby and (not use_ruby or n > ruby_max)):
            continue
        with support.RoundTripProxy(port, hold_s=ruby_hold_s if is_ruby else 0.1) as proxy:
            if command.writes:
                reset_writes(client)
            else:
                prepare_reads(f"redis://127.0.0.1:{port}/0", client)
            refresh(client)
            proxy.reset()
            measure(command.argv(proxy.url), proxy.url)
            counts[command.name] = proxy.round_trips()
    return counts


def server_cpu(url: str, client: redis.Redis) -> tuple[float, int]:
    """What redis-server itself spent on one ``status --json`` (``INFO commandstats``):
    seconds, commands."""
    refresh(client)
    client.config_resetstat()
    measure(quiesce("status", "--json")(url), url)
    stats = client.info("commandstats")
    usec = sum(int(v["usec"]) for v in stats.values())
    return usec / 1e6, sum(int(v["calls"]) for v in stats.values())


def ledger(client: redis.Redis, prefix: str = "quiesce:") -> list[tuple[str, str, int]]:
    """Every key under quiesce's prefix: (key, type, bytes of its values)."""
    rows = []
    c: Any = client  # redis-py's reply types are unions of every shape
    for raw_key in sorted(c.scan_iter(match=f"{prefix}*", count=10_000)):
        kind = c.type(raw_key).decode()
        size = 0
        if kind == "string":
            size = int(c.strlen(raw_key))
        elif kind == "list":
            size = sum(len(v) for v in c.lrange(raw_key, 0, -1))
        elif kind == "hash":
            size = sum(len(f) + len(v) for f, v in c.hgetall(raw_key).items())
        elif kind == "set":
            size = sum(len(v) for v in c.smembers(raw_key))
        elif kind == "zset":
            size = sum(len(m) for m, _ in c.zrange(raw_key, 0, -1, withscores=True))
        rows.append((raw_key.decode(errors="replace"), kind, size))
    return rows


def ledger_after(url: str, client: redis.Redis, deploys: int) -> list[tuple[str, str, int]]:
    """The ledger after ``deploys`` quiet runs in a row (only the signals cleared between)."""
    reset_writes(client)
    for _ in range(deploys):
        doomed = list(client.scan_iter(match="*-signals", count=10_000))
        for i in range(0, len(doomed), 10_000):
            client.delete(*doomed[i : i + 10_000])
        refresh(client)
        measure(quiesce("quiet", "--no-wait", "--no-mark")(url), url)
    return ledger(client)


def ratio(a: Run | None, b: Run | None) -> str:
    return f"{a.wall / b.wall:.2f}x" if a and b else "-"


def print_table(n: int, r: dict[str, Run]) -> None:
    def cell(name: str) -> str:
        run = r.get(name)
        return f"{run.wall:>6.2f} s {run.cpu:>5.2f} s {run.rss_mb:>4.0f} MB" if run else "-"

    def cpu_ratio(a: Run | None, b: Run | None) -> str:
        return f"{a.cpu / b.cpu:.2f}x" if a and b and b.cpu else "-"

    print(f"\n{n:,} processes, {n:,} queues; best wall time of the runs (its CPU time), peak RSS")
    print(
        f"{'work':<38}{'quiesce wall/CPU/RSS':>24}{'compared with':>24}"
        f"{'wall':>7}{'CPU':>7}  target"
    )
    rows = [
        ("list the fleet as JSON (vs Ruby)", "status --json", "ruby listing", "<= 0.75x"),
        (
            "quiet, no wait (vs Ruby quiet loop)",
            "quiet --no-wait --no-mark",
            "ruby quiet loop",
            "<= 0.5x",
        ),
        ("exporter scrape (vs Ruby listing)", "exporter scrape", "ruby listing", "<= 1x"),
        ("status (vs status --json)", "status", "status --json", "<= 1x"),
        ("rejoin poll (vs status --json)", "rejoin (one poll)", "status --json", "<= 1x"),
    ]
    for label, ours, theirs, target in rows:
        a, b = r.get(ours), r.get(theirs)
        print(
            f"{label:<38}{cell(ours):>24}{cell(theirs):>24}"
            f"{ratio(a, b):>7}{cpu_ratio(a, b):>7}  {target}"
        )


def print_curve(
    sizes: Sequence[int], curve: dict[int, dict[str, Run]], trips: dict[int, dict[str, int]]
) -> None:
    print("\ncost curve: best wall s/its CPU s (peak RSS MB) [round trips on the wire]")
    print(f"{'command':<28}" + "".join(f"{n:>28,}" for n in sizes))
    for command in COMMANDS:
        cells = []
        for n in sizes:
            run = curve[n].get(command.name)
            rt = trips.get(n, {}).get(command.name)
            shown = "-" if rt is None else str(rt)
            cells.append(
                f"{run.wall:.2f}/{run.cpu:.2f} ({run.rss_mb:.0f}) [{shown}]" if run else "-"
            )
        if any(c != "-" for c in cells):
            print(f"{command.name:<28}" + "".join(f"{c:>28}" for c in cells))


def print_floor(n: int, runs: dict[str, Run], server: tuple[float, int]) -> None:
    print(f"\nthe floor at {n:,} processes (measured in the same rounds as the commands)")
    for name, run in runs.items():
        if name.startswith("floor:"):
            inner = run.out.strip()
            print(
                f"  {name:<28} {run.wall:.2f} s whole process ({run.cpu:.2f} s CPU,"
                f" {run.rss_mb:.0f} MB), {inner} s the read itself"
            )
        elif name in ("python -c pass", "quiesce --version"):
            print(f"  {name:<28} {run.wall:.2f} s ({run.cpu:.2f} s CPU, {run.rss_mb:.0f} MB)")
    print(f"  {'redis-server, status --json':<28} {server[0]:.3f} s CPU for {server[1]:,} commands")
    whole = runs.get("floor: redis-py read")
    if whole is None:
        return
    for name, run in runs.items():
        if name.startswith(("ruby", "floor", "python", "quiesce --version")):
            continue
        print(
            f"  {name:<28} {run.wall - whole.wall:+.2f} s wall, {run.cpu - whole.cpu:+.2f} s CPU"
            f" over the redis-py read ({run.cpu / whole.cpu:.1f}x its CPU)"
        )


def print_ledger(n: int, deploys: int, rows: list[tuple[str, str, int]]) -> None:
    print(f"\nquiesce's keys after {deploys} deploys at {n:,} processes (bytes of their values)")
    for key, kind, size in rows:
        print(f"  {key:<48} {kind:<7} {size:>12,}")
    print(f"  {'total':<48} {'':<7} {sum(r[2] for r in rows):>12,}")


def profile(url: str, argv: list[str]) -> None:
    from typer.testing import CliRunner

    from quiesce.cli.app import app

    profiler = cProfile.Profile()
    profiler.enable()
    result = CliRunner().invoke(app, ["--redis-url", url, *argv])
    profiler.disable()
    print(f"profile of {' '.join(argv)!r}: exit {result.exit_code}")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
    print(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000", help="processes (and queues)")
    parser.add_argument("--runs", type=int, default=3, help="runs per command; best kept")
    parser.add_argument("--no-ruby", action="store_true", help="quiesce only")
    parser.add_argument("--ruby-round-trips-max", type=int, default=1000)
    parser.add_argument("--ruby-hold-s", type=float, default=0.01)
    parser.add_argument("--no-round-trips", action="store_true")
    parser.add_argument("--profile", metavar="COMMAND", help="e.g. 'status --json'")
    parser.add_argument(
        "--only",
        default="",
        help="command names as in the table, comma-separated (e.g. 'status --json,ruby listing');"
        " no floor, no ledger",
    )
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    use_ruby = not args.no_ruby
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    if use_ruby and shutil.which("ruby") is None:
        sys.exit("bench: ruby is not on PATH (apt-get install ruby-sidekiq), or pass --no-ruby")
    server: Any = importlib.import_module("tests.support").RedisServer()
    client = redis.Redis.from_url(server.url)
    try:
        url = server.url
        if args.profile:
            n = max(sizes)
            _load.populate(url, n, n)
            prepare_reads(url, client)
            profile(url, args.profile.split())
            return
        curve: dict[int, dict[str, Run]] = {}
        trips: dict[int, dict[str, int]] = {}
        for n in sizes:
            client.flushall()
            started = time.perf_counter()
            _load.populate(url, n, n)
            print(f"seeded {n:,} processes and queues in {time.perf_counter() - started:.1f} s")
            prepare_reads(url, client)
            curve[n] = run_size(url, client, args.runs, use_ruby, only)
            if not args.no_round_trips:
                trips[n] = round_trips(
                    server.port, client, n, use_ruby, args.ruby_round_trips_max, args.ruby_hold_s
                )
        n = max(sizes)  # the database still holds the largest fleet
        print_table(n, curve[n])
        print_curve(sizes, curve, trips)
        if only:
            return
        print_floor(n, curve[n], server_cpu(url, client))
        print_ledger(n, args.runs, ledger_after(url, client, args.runs))
    finally:
        client.close()
        server.stop()


if __name__ == "__main__":
    main()
