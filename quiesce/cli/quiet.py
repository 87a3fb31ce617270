"""``quiesce quiet``: the release command."""

from __future__ import annotations

import dataclasses
import os
import signal
from typing import Annotated, Any

import typer

from quiesce.cli.base import _interrupt, _quiet_fly, _release_label, _scope, _settings, app
from quiesce.cli.guard import guard, open_stores, output
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
    Strategy,
    Tags,
    any_duration,
    connection_options,
    filters_of,
)
from quiesce.cli.progress import QuietProgress
from quiesce.cli.usage import usage_error
from quiesce.errors import ConfigError
from quiesce.model.verdict import Until
from quiesce.text import safe


@app.command()
@connection_options
def quiet(
    ctx: typer.Context,
    until: Annotated[
        Until,
        typer.Option(
            help="delivered: a heartbeat after the push popped the signal (one beat: 5 s on "
            "Sidekiq <= 6, 10 s on 7+). quiet: the process reports quiet (one beat later). "
            "drained: quiet, and no job running any more (busy 0 and an empty work hash); "
            "at the deadline, processes still running jobs fail with the jobs listed.",
        ),
    ] = Until.DELIVERED,
    timeout: Annotated[
        float,
        typer.Option(
            metavar="DURATION",
            help="How long to wait for confirmation (30, 30s, 2m).",
            parser=any_duration,
        ),
    ] = 30.0,
    wait: Annotated[
        bool, typer.Option(help="Wait for confirmation (--no-wait: push only).")
    ] = True,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; write nothing.")
    ] = False,
    best_effort: Annotated[
        bool,
        typer.Option(
            "--best-effort", help="Report as usual but always exit 0 (never block a deploy)."
        ),
    ] = False,
    release: Annotated[
        str | None,
        typer.Option(
            help="Release label for the deploy record and mark. Default: $RELEASE_LABEL, "
            "else $FLY_IMAGE_REF.",
            show_default=False,
        ),
    ] = None,
    strategy: Annotated[
        Strategy | None,
        typer.Option(
            envvar="QUIESCE_STRATEGY",
            help="The deploy strategy, as in fly.toml's [deploy] strategy (Fly's default: "
            "rolling): recorded with the deploy; bluegreen also enables its checks.",
            show_default=False,
        ),
    ] = None,
    mark: Annotated[
        bool, typer.Option(help="Write Sidekiq's deploy mark (shown in its Web UI metrics).")
    ] = True,
    hostname: Hostnames = None,
    tag: Tags = None,
    label: Labels = None,
    queue: Queues = None,
    identity: Identities = None,
    exclude_hostname: ExcludeHostnames = None,
    exclude_tag: ExcludeTags = None,
    exclude_label: ExcludeLabels = None,
    exclude_queue: ExcludeQueues = None,
    kill_timeout: Annotated[
        float | None,
        typer.Option(
            metavar="DURATION",
            help="The app's kill_timeout (fly.toml; Fly's default is 5): running jobs are "
            "compared with it, and the report says which would be killed mid-run.",
            parser=any_duration,
            show_default=False,
        ),
    ] = None,
    sidekiq_timeout: Annotated[
        float | None,
        typer.Option(
            metavar="DURATION",
            help="Sidekiq's shutdown timeout (its -t; Sidekiq's default is 25), for the advice.",
            parser=any_duration,
            show_default=False,
        ),
    ] = None,
    allow_newer: Annotated[
        bool,
        typer.Option(
            "--allow-newer-sidekiq",
            help="Treat Sidekiq versions after 8.x as 8.x (TSTP, 10 s beat) instead of "
            "reporting them unreadable.",
        ),
    ] = False,
    json_output: JsonOutput = False,
    show_all: Annotated[
        bool, typer.Option("--all", help="List every process, not only problems.")
    ] = False,
    max_connections_ratio: Annotated[
        float | None,
        typer.Option(
            metavar="RATIO",
            min=0,
            help="With --strategy bluegreen: refuse (exit 9, nothing pushed) when the "
            "projected peak passes this fraction of maxclients / max_connections.",
            show_default=False,
        ),
    ] = None,
    postgres_url: Annotated[
        str | None,
        typer.Option(
            envvar="QUIESCE_POSTGRES_URL",
            help="With --strategy bluegreen: also project PostgreSQL's backends "
            "(needs the postgres extra). Prefer the env var: argv is visible.",
            show_default=False,
        ),
    ] = None,
    app_name: AppName = None,
    min_processes: Annotated[
        int | None,
        typer.Option(
            "--min-processes",
            metavar="N",
            min=0,
            help="Exit 2, nothing signalled, when fewer than N live processes are "
            "targeted (already quiet ones count). Default: only warn when under half of "
            "the previous deploy's.",
            show_default=False,
        ),
    ] = None,
    allow_empty: Annotated[
        bool,
        typer.Option(
            "--allow-empty",
            help="No live process here while a live Sidekiq fleet is registered under "
            "another namespace or database is a wrong target (exit 2); this deploys anyway "
            "(a first deploy beside another app).",
        ),
    ] = False,
) -> None:
    """Send TSTP to every live Sidekiq process and confirm each one took it.

    The release command: replaces `rake sidekiq:quiet`. Filters narrow the targets
    (repeat one to accept any of its values; different filters must all match).
    Embedded processes are skipped (Sidekiq ignores signals there), already-quiet ones
    are left alone. A signal that expires unconsumed is pushed again while the deadline
    allows. Records the deploy in its scope's history, quiesce:deploy:ledger:<scope>
    (14 days; the scope is --app / $FLY_APP_NAME, else the namespace and filters), with
    $FLY_API_TOKEN what Fly lists for the app. Writes Sidekiq's deploy mark for the
    release label (--no-mark to skip).
    """
    from quiesce.model.report import QuietOptions
    from quiesce.runs.quiet import quiet_fleet
    from quiesce.views.fleet import report_json, report_text

    options = QuietOptions(
        filters=filters_of(
            hostname=hostname,
            tag=tag,
            label=label,
            queue=queue,
            identity=identity,
            exclude_hostname=exclude_hostname,
            exclude_tag=exclude_tag,
            exclude_label=exclude_label,
            exclude_queue=exclude_queue,
        ),
        until=until,
        timeout_s=timeout,
        wait=wait,
        dry_run=dry_run,
        release=_release_label(release),
        strategy=strategy.value if strategy is not None else "unknown",
        mark=mark,
        allow_newer=allow_newer,
        kill_timeout_s=kill_timeout,
        sidekiq_timeout_s=sidekiq_timeout,
        min_processes=min_processes,
        allow_empty=allow_empty,
    )
    if until is Until.DRAINED and not wait:
        usage_error("--until drained waits for the jobs: it cannot be used with --no-wait")
    progress = QuietProgress(until.value, timeout, wait)
    # A release command cut off by its timeout gets TERM: end the wait with a full report.
    signal.signal(signal.SIGTERM, _interrupt)
    with (
        guard(best_effort=best_effort),
        open_stores(settings := _settings(ctx)) as stores,
        _quiet_fly(app_name) as (fly, fly_missing),
    ):
        options = dataclasses.replace(
            options,
            default_url=settings.default_url,
            scope=_scope(settings, app_name, options.filters),
            fly_app=(app_name or os.environ.get("FLY_APP_NAME") or "").strip() or None,
            image_ref=os.environ.get("FLY_IMAGE_REF", "").strip() or None,
            release_machine=os.environ.get("FLY_MACHINE_ID", "").strip() or None,
            fly_missing=fly_missing,
        )
        options = _bluegreen(options, max_connections_ratio, postgres_url)
        try:
            report = quiet_fleet(
                stores, options, on_event=None if json_output else progress, fly=fly
            )
        finally:
            progress.close()
    with output(best_effort=best_effort):
        if json_output:
            echo_json(report_json(report, best_effort))
        else:
            typer.echo(
                report_text(
                    report,
                    show_all=show_all,
                    best_effort=best_effort,
                    live=progress.header_shown,
                )
            )
    raise typer.Exit(0 if best_effort else int(report.exit_code))


def _bluegreen(options: Any, max_ratio: float | None, postgres_url: str | None) -> Any:
    """``quiet``'s options with the bluegreen preflight hooked in (only for bluegreen)."""
    if options.strategy != "bluegreen":
        if max_ratio is not None:
            raise ConfigError("--max-connections-ratio needs --strategy bluegreen")
        return options
    from quiesce.adapters.postgres import PostgresReader
    from quiesce.model.preflight import BlueGreenPreflight

    reader = PostgresReader(postgres_url) if postgres_url else None
    hook = BlueGreenPreflight(
        max_ratio=max_ratio,
        echo=lambda line: typer.echo(safe(line), err=True),
        read_postgres=reader.read_once if reader is not None else None,
    )
    return dataclasses.replace(options, before_push=hook)
