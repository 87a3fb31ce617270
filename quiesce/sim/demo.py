"""``quiesce demo``: the whole deploy cycle on a private Redis and a simulated fleet.

Only the Redis and the fleet are simulated (``quiesce.sim.deploy``). The release command
is ``runs.quiet.quiet_fleet`` with the options ``quiesce quiet`` builds, its report is
``views.fleet.report_text``, the rejoin tracking is ``runs.rejoin.RejoinWatch``
(heartbeats only: the Machines are not Fly's) and its report ``views.rejoin.rejoin_text``:
what a user sees here is what the production commands print.

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
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from quiesce.errors import ExitCode
from quiesce.sim.simulator import make_processes

if TYPE_CHECKING:
    from quiesce.model.rejoin import RejoinReport
    from quiesce.model.report import Event
    from quiesce.settings import Settings

from quiesce.sim.deploy import (
    GREEN_WAIT_S,
    KILL_TIMEOUT_S,
    NEW_RELEASE,
    OLD_RELEASE,
    POLL_S,
    QUEUE,
    SLOW_BOOT_S,
    TAG,
    WARM_UP_S,
    DemoOptions,
    Simulation,
)

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
        if watch.interrupted:  # the watch keeps its report; the demo stops as on Ctrl-C
            raise KeyboardInterrupt
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
