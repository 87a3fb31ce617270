"""``quiesce demo``: the whole deploy cycle on a private Redis and a simulated fleet."""

from __future__ import annotations

import enum
import signal
from typing import Annotated

import typer

from quiesce.cli.base import _interrupt, _sidekiq_version, app
from quiesce.cli.guard import guard
from quiesce.cli.options import (
    beat_duration,
    positive_duration,
)
from quiesce.cli.progress import QuietProgress
from quiesce.errors import ConfigError


class DemoStrategy(enum.StrEnum):
    IMMEDIATE = "immediate"
    BLUEGREEN = "bluegreen"


class DemoRedis(enum.StrEnum):
    AUTO = "auto"
    REDIS_SERVER = "redis-server"
    FAKEREDIS = "fakeredis"


@app.command()
def demo(
    machines: Annotated[
        int, typer.Option(help="Simulated Fly Machines (one Sidekiq process each).", min=1, max=200)
    ] = 12,
    sidekiq_version: Annotated[
        str,
        typer.Option(
            help="Sidekiq version to imitate, e.g. 6.4.1, 7.3.10, 8.1.7 (5.2 to 8.x).",
            callback=_sidekiq_version,
        ),
    ] = "7.3.10",
    strategy: Annotated[
        DemoStrategy, typer.Option(help="How the simulated flyctl deploys.")
    ] = DemoStrategy.IMMEDIATE,
    fail_machine: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="Machine number N (1 = the first) does not come back: the run ends with "
            "the rejoin verdict 'not whole' (exit 7).",
            min=1,
            show_default=False,
        ),
    ] = None,
    beat_interval: Annotated[
        float,
        typer.Option(
            metavar="DURATION",
            help="Seconds between simulated heartbeats (Sidekiq 7+: 10).",
            parser=beat_duration,
        ),
    ] = 1.0,
    rejoin_timeout: Annotated[
        float,
        typer.Option(
            metavar="DURATION",
            help="How long the rejoin tracking waits (30s, 1m): it ends as soon as the fleet "
            "is whole.",
            parser=positive_duration,
            show_default="30s",
        ),
    ] = 30.0,
    metrics_port: Annotated[
        int,
        typer.Option(
            metavar="PORT",
            help="Port for the metrics while it runs (0: a free one).",
            min=0,
            max=65535,
        ),
    ] = 0,
    embedded: Annotated[
        DemoRedis,
        typer.Option(
            "--redis",
            help="The private Redis: redis-server when on PATH, else fakeredis (auto).",
        ),
    ] = DemoRedis.AUTO,
    seed: Annotated[int, typer.Option(hidden=True)] = 7,
) -> None:
    """The whole deploy cycle in under a minute, on a private Redis and a simulated fleet.

    Starts its own Redis (never yours: redis-server on a free port, no persistence, else
    fakeredis), a simulated Sidekiq fleet working jobs, then runs the real release
    command (`quiesce quiet`), a simulated Fly deploy (immediate: in place, in batches;
    bluegreen: new Machines, then the old ones go) and the real `quiesce rejoin --wait`,
    and prints the rejoin report. Stops everything it started, on Ctrl-C too.
    Exit 0 when the fleet came back whole, 7 when not (--fail-machine).
    """
    from quiesce.sim.demo import run_demo
    from quiesce.sim.deploy import DemoOptions

    with guard():
        if fail_machine is not None and fail_machine > machines:
            raise ConfigError(f"--fail-machine {fail_machine}: there are {machines} Machines")
        options = DemoOptions(
            machines=machines,
            sidekiq_version=sidekiq_version,
            strategy=strategy.value,
            fail_machine=fail_machine,
            beat_interval_s=beat_interval,
            rejoin_timeout_s=rejoin_timeout,
            metrics_port=metrics_port,
            redis=embedded.value,
            seed=seed,
        )
        # The release command's own progress line, as `quiesce quiet` prints it.
        progress = QuietProgress("delivered", 30.0, True)
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            code = run_demo(
                options,
                lambda line: typer.echo(line),
                on_quiet_event=progress,
                quiet_live=lambda: progress.header_shown,
            )
        finally:
            progress.close()
    raise typer.Exit(code)
