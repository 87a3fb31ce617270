"""After the deploy: ``quiesce rejoin`` (which Machines came back) and ``quiesce recover``
(replace what a failed deploy left quiet)."""

from __future__ import annotations

import signal
import sys
from typing import Annotated

import typer

from quiesce.cli.base import _columns, _fly_client, _interrupt, _scope, _settings, app
from quiesce.cli.guard import guard, open_stores, output
from quiesce.cli.json_output import echo_json
from quiesce.cli.options import (
    AppName,
    ExcludeHostnames,
    ExcludeTags,
    Hostnames,
    JsonOutput,
    Tags,
    connection_options,
    filters_of,
    positive_duration,
)
from quiesce.cli.progress import RejoinProgress
from quiesce.errors import ConfigError, ExitCode
from quiesce.model.filters import Filters
from quiesce.model.recover import DEFAULT_AFTER_S
from quiesce.text import safe


@app.command()
@connection_options
def rejoin(
    ctx: typer.Context,
    wait: Annotated[
        bool, typer.Option("--wait", help="Poll until the fleet is whole or --timeout passes.")
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            metavar="DURATION",
            help="How long --wait waits (20m, 90s, 1h). Without --wait: Machines still not "
            "back this long after the quiet are reported missing.",
            parser=positive_duration,
            show_default="20m",
        ),
    ] = 1200.0,
    interval: Annotated[
        float,
        typer.Option(
            metavar="DURATION",
            help="Seconds between polls with --wait (the Fly list: at most every 5 s).",
            parser=positive_duration,
        ),
    ] = 5.0,
    app_name: AppName = None,
    process_group: Annotated[
        str | None, typer.Option(metavar="GROUP", help="Only this Fly process group (e.g. worker).")
    ] = None,
    fly: Annotated[
        bool, typer.Option(help="Use the Fly Machines API when a token and app are known.")
    ] = True,
    hostname: Hostnames = None,
    tag: Tags = None,
    exclude_hostname: ExcludeHostnames = None,
    exclude_tag: ExcludeTags = None,
    release: Annotated[
        str | None,
        typer.Option(metavar="LABEL", help="The new release label (default: the deploy record's)."),
    ] = None,
    allow_newer: Annotated[
        bool, typer.Option("--allow-newer-sidekiq", help="Treat versions after 8.x as 8.x.")
    ] = False,
    json_output: JsonOutput = False,
    show_all: Annotated[
        bool, typer.Option("--all", help="List every Machine, not only those not back.")
    ] = False,
    stopped_ok: Annotated[
        bool,
        typer.Option(
            "--stopped-ok",
            help="Machines that ran Sidekiq at the quiet and Fly shows stopped now are not "
            "expected back (default: they are not back).",
        ),
    ] = False,
) -> None:
    """Say which Machines came back after the deploy: exit 0 only when the fleet is whole.

    Judges the latest deploy record (written by `quiesce quiet`) against the live
    heartbeats and, with FLY_API_TOKEN and an app, Fly's Machine list: a Machine is back
    when Fly shows it started on the deployed release and it runs a new, non-quiet
    process that kept beating. Per Machine rejoined, partial, starting, draining,
    quiet-idle, old-running, old-image, pending, missing, gone, replaced, stopped,
    not-expected, conflict or new; per Fly process group "N of N back"; how long each
    Machine took no jobs. Without Fly the image is not verified (said). Reads only.
    Exit 7 when not whole (at the --timeout deadline with --wait).
    """
    from quiesce.runs.rejoin import RejoinOptions, RejoinWatch
    from quiesce.views.rejoin import rejoin_json, rejoin_text

    with guard():
        timeout_s = timeout
        progress = RejoinProgress()
        with (
            open_stores(settings := _settings(ctx)) as stores,
            _fly_client(app_name, use=fly) as (client, why),
        ):
            filters = filters_of(
                hostname=hostname,
                tag=tag,
                exclude_hostname=exclude_hostname,
                exclude_tag=exclude_tag,
            )
            options = RejoinOptions(
                filters=filters,
                scope=_scope(
                    settings, app_name, Filters(hostnames=filters.hostnames, tags=filters.tags)
                ),
                release=release,
                process_group=process_group,
                allow_newer=allow_newer,
                timeout_s=timeout_s,
                interval_s=interval,
                fly_note=why if fly else None,
                stopped_ok=stopped_ok,
            )
            watch = RejoinWatch(stores, client, options)
            signal.signal(signal.SIGTERM, _interrupt)
            try:
                report = watch.wait(None if json_output else progress) if wait else watch.poll(None)
            finally:
                progress.close()
    with output():
        if json_output:
            echo_json(rejoin_json(report))
        else:
            typer.echo(rejoin_text(report, show_all=show_all, width=_columns()))
    if watch.interrupted:
        raise typer.Exit(int(ExitCode.INTERRUPTED))
    raise typer.Exit(0 if report.whole else int(ExitCode.NOT_WHOLE))


@app.command()
@connection_options
def recover(
    ctx: typer.Context,
    after: Annotated[
        float,
        typer.Option(
            metavar="DURATION",
            help="Only processes quiet for longer than this (5m, 90s).",
            parser=positive_duration,
            show_default="5m",
        ),
    ] = DEFAULT_AFTER_S,
    yes: Annotated[bool, typer.Option("--yes", help="Do it (default: print the plan).")] = False,
    restart: Annotated[
        bool, typer.Option("--restart", help="Restart those Machines through the Fly API.")
    ] = False,
    stop: Annotated[
        bool,
        typer.Option(
            "--stop", help="Send TERM through Sidekiq's signal list (the supervisor restarts)."
        ),
    ] = False,
    app_name: AppName = None,
    hostname: Hostnames = None,
    tag: Tags = None,
    exclude_hostname: ExcludeHostnames = None,
    exclude_tag: ExcludeTags = None,
    json_output: JsonOutput = False,
) -> None:
    """Replace processes a failed deploy left quiet (Sidekiq cannot un-quiet them).

    Acts on whole Machines: one whose every live process (whatever its tag) was quieted
    by a recorded deploy of this fleet longer than --after ago and still beats. With
    FLY_API_TOKEN and an app, Fly's view is read first: Machines starting, being
    replaced, stopped or already on the deployed release are skipped, saying why.
    Prints what it would do, with each Machine's running jobs; with --yes, --restart
    restarts each through the Fly API (one a second, one line per Machine, going on past
    failures) or --stop sends TERM so the supervisor starts a new process. Never touches
    a Machine that still runs a non-quiet process.
    """
    from quiesce.runs.recover import recover
    from quiesce.views.rejoin import recover_json, recover_text

    with guard():
        if restart and stop:
            raise ConfigError("choose one of --restart and --stop")
        if yes and not (restart or stop):
            raise ConfigError("--yes needs --restart or --stop")
        action = "restart" if restart else "stop" if stop else "none"
        with (
            open_stores(settings := _settings(ctx)) as stores,
            _fly_client(app_name) as (client, why),
        ):
            if restart and client is None:
                raise ConfigError(f"--restart needs the Fly API: {why}")
            filters = filters_of(
                hostname=hostname,
                tag=tag,
                exclude_hostname=exclude_hostname,
                exclude_tag=exclude_tag,
            )
            scope = _scope(
                settings, app_name, Filters(hostnames=filters.hostnames, tags=filters.tags)
            )
            report = recover(
                stores,
                client,
                filters=filters,
                scope=scope,
                after_s=after,
                action=action,
                apply=yes,
                fly_note=why,
                on_result=None
                if json_output
                else lambda m, r: print(safe(f"restart {m}: {r}"), file=sys.stderr),
            )
    with output():
        if json_output:
            echo_json(recover_json(report))
        else:
            typer.echo(recover_text(report))
    raise typer.Exit(0 if report.ok else int(ExitCode.FLY_API))
