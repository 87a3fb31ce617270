"""``quiesce status`` (the fleet at a glance) and ``quiesce simulate`` (a fleet to look at)."""

from __future__ import annotations

import enum
import signal
import sys
import time
from typing import Annotated

import typer

from quiesce.cli.base import (
    _columns,
    _interrupt,
    _scope,
    _scope_notes,
    _settings,
    _sidekiq_version,
    app,
)
from quiesce.cli.guard import guard, open_stores
from quiesce.cli.json_output import echo_json
from quiesce.cli.options import (
    AppName,
    ExcludeHostnames,
    ExcludeLabels,
    ExcludeQueues,
    ExcludeTags,
    Hostnames,
    Identities,
    JsonOutput,
    Labels,
    Queues,
    Tags,
    any_duration,
    connection_options,
    filters_of,
    positive_duration,
)
from quiesce.errors import ConfigError, ExitCode
from quiesce.text import safe


class Expect(enum.StrEnum):
    """``status --expect``: the states a deploy step can wait for."""

    RUNNING = "running"
    QUIET = "quiet"


@app.command()
@connection_options
def status(
    ctx: typer.Context,
    json_output: JsonOutput = False,
    machines: Annotated[
        bool,
        typer.Option(
            "--machines",
            "-m",
            help="One line per Machine (large fleets); with --json, per-Machine summaries "
            "without the process lists.",
        ),
    ] = False,
    allow_newer: Annotated[
        bool, typer.Option("--allow-newer-sidekiq", help="Treat versions after 8.x as 8.x.")
    ] = False,
    jobs: Annotated[
        bool,
        typer.Option(
            "--jobs",
            help="Also list the jobs running on each process (class, queue, jid, runtime), "
            "longest first, and how many run on quiet processes. Reads the work hashes too "
            "(still one pipeline).",
        ),
    ] = False,
    show_args: Annotated[
        bool,
        typer.Option(
            "--args", help="With --jobs: show job arguments (they may hold personal data)."
        ),
    ] = False,
    hostname: Hostnames = None,
    tag: Tags = None,
    label: Labels = None,
    queue: Queues = None,
    identity: Identities = None,
    exclude_hostname: ExcludeHostnames = None,
    exclude_tag: ExcludeTags = None,
    exclude_label: ExcludeLabels = None,
    exclude_queue: ExcludeQueues = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[
        float,
        typer.Option(
            metavar="DURATION",
            help="Seconds between refreshes with --watch.",
            parser=positive_duration,
        ),
    ] = 2.0,
    expect: Annotated[
        Expect | None,
        typer.Option(
            help="Exit 3 unless every live, non-embedded process is in this state: running "
            "(and at least --min of them live), or quiet (quiet or quieting: it took "
            "quiesce's TSTP and reports quiet on its next beat).",
            show_default=False,
        ),
    ] = None,
    min_live: Annotated[
        int,
        typer.Option(
            "--min", min=1, help="With --expect running: how many live processes at least."
        ),
    ] = 1,
    app_name: AppName = None,
) -> None:
    """Show every Sidekiq process, grouped by Machine, and its quiet state.

    Per process: version, tag/labels, state (running, quiet, dead, embedded, stalled,
    unreadable), busy/concurrency, time since the last beat, how long quiet (from
    the latest deploy record), pending signals and RSS. Reads only; writes nothing.
    """
    from quiesce.runs.status import StatusRound, read_status, rounds
    from quiesce.views.fleet import status_json, status_text
    from quiesce.views.jobs import add_jobs_json, excluded_text, jobs_text

    jobs = jobs or show_args
    excludes = filters_of(
        hostname=hostname,
        tag=tag,
        label=label,
        queue=queue,
        identity=identity,
        exclude_hostname=exclude_hostname,
        exclude_tag=exclude_tag,
        exclude_label=exclude_label,
        exclude_queue=exclude_queue,
    )

    def show(r: StatusRound) -> None:
        snapshot = r.snapshot
        if json_output:
            # --jobs edits the process entries once they are built: not lazily.
            data = status_json(snapshot, machines_only=machines, lazy=not jobs)
            if excludes.active:
                data["excluded_by"] = dict(r.excluded)
            if jobs:
                add_jobs_json(data, snapshot, args=show_args)
            echo_json(data)
            return
        if watch and sys.stdout.isatty():
            typer.echo("\x1b[H\x1b[2J", nl=False)
        typer.echo(status_text(snapshot, machines_only=machines, width=_columns()))
        if r.excluded:
            typer.echo(excluded_text(list(r.excluded)))
        if jobs:
            typer.echo("\n".join(jobs_text(snapshot, args=show_args, width=_columns())))
        for note in [*r.notes, *_scope_notes(r.whole)]:
            typer.echo(safe(f"note: {note}"))

    with guard(), open_stores(settings := _settings(ctx)) as stores:
        scope = _scope(settings, app_name, None)
        last = rounds(
            lambda: read_status(
                stores,
                filters=excludes,
                scope=scope,
                allow_newer=allow_newer,
                jobs=jobs,
                default_url=settings.default_url,
            ),
            show,
            watch=watch,
            interval_s=interval,
        )
        snapshot = last.snapshot
    if expect is not None:
        from quiesce.model.gate import check_expect

        verdict = check_expect(snapshot, expect.value, min_live=min_live)
        typer.echo(safe(f"quiesce: {verdict.message}"), err=True)
        if not verdict.ok:
            raise typer.Exit(int(ExitCode.NOT_CONFIRMED))


SIM_TAG = "quiesce-sim"


@app.command()
@connection_options
def simulate(
    ctx: typer.Context,
    processes: Annotated[
        int, typer.Option(help="How many Sidekiq processes.", min=1, max=100_000)
    ] = 12,
    per_machine: Annotated[
        int, typer.Option(help="Processes per simulated Machine.", min=1, max=1_000)
    ] = 2,
    sidekiq_version: Annotated[
        str,
        typer.Option(
            help="Sidekiq version to imitate, e.g. 6.4.1, 7.3.10, 8.1.7 (5.2 to 8.x).",
            callback=_sidekiq_version,
        ),
    ] = "7.3.10",
    beat_interval: Annotated[
        float | None,
        typer.Option(
            metavar="DURATION",
            help="Seconds between beats. Default: the version's (5 or 10).",
            show_default=False,
            parser=positive_duration,
        ),
    ] = None,
    duration: Annotated[
        float,
        typer.Option(
            "--duration",  # typer 0.27 makes a metavar equal to the name the option's name
            metavar="DURATION",
            help="Stop after this many seconds (0: Ctrl-C).",
            parser=any_duration,
        ),
    ] = 0.0,
    force: Annotated[
        bool, typer.Option("--force", help="Run even if real Sidekiq processes share this Redis.")
    ] = False,
) -> None:
    """Run a simulated Sidekiq fleet that heartbeats like the real one (for demos and tests).

    Writes fake processes (tag quiesce-sim) into the Redis: never point it at production.
    It refuses to start when other live Sidekiq processes are registered, unless --force.
    """
    from quiesce.adapters.redis.connect import connect
    from quiesce.runs.read import read_fleet
    from quiesce.sim.simulator import SimulatedFleet, make_processes
    from quiesce.text import plural

    with guard(), open_stores(settings := _settings(ctx), first_only=True) as stores:
        store = stores[0]
        others = [
            p
            for p in read_fleet([store]).processes
            if p.alive and p.tag != SIM_TAG and p.problem is None
        ]
        if others and not force:
            raise ConfigError(
                f"{plural(len(others), 'other Sidekiq process', 'other Sidekiq processes')} "
                f"registered in {store.label}; refusing to mix simulated ones in (use --force)"
            )
        fleet = SimulatedFleet(
            connect(store.target, settings),
            make_processes(
                processes, version=sidekiq_version, per_machine=per_machine, tag=SIM_TAG
            ),
            keys=store.keys,
            beat_interval_s=beat_interval,
        )
        machines = plural(-(-processes // per_machine), "machine")
        typer.echo(
            safe(
                f"simulating {processes} Sidekiq {sidekiq_version} "
                f"{'process' if processes == 1 else 'processes'} on {machines} in {store.label}; "
                "Ctrl-C to stop"
            ),
            err=True,
        )
        # A background job ignores SIGINT in a non-interactive shell: TERM must stop it cleanly.
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            fleet.start()  # inside: a TERM during the first beat still leaves the registry
            deadline = time.monotonic() + duration if duration > 0 else None
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.2)
                if fleet.error is not None:
                    raise fleet.error
        except KeyboardInterrupt:
            pass
        finally:
            fleet.stop()
            fleet.leave_all()
            fleet.client.close()
        typer.echo("simulated processes left the registry", err=True)
