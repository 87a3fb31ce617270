"""The ``quiesce`` command line: parse, call one service function, render, exit.

Start-up matters (the release command runs on every deploy), so redis-py and the
adapters are imported inside the commands, not at module import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from quiesce import __version__
from quiesce.cli.guard import guard, open_stores, output
from quiesce.cli.json_output import echo_json
from quiesce.cli.options import (
    AppContext,
    Strategy,
    any_duration,
    app_context,
    beat_duration,
    configure_logging,
    connection_options,
    connection_params,
    positive_duration,
    with_params,
)
from quiesce.cli.progress import QuietProgress, RejoinProgress
from quiesce.cli.usage import Group, UsageError, exit_codes_help, is_help_request, usage_error
from quiesce.errors import ConfigError, ExitCode
from quiesce.model.filters import Filters
from quiesce.model.recover import DEFAULT_AFTER_S
from quiesce.model.verdict import Until
from quiesce.settings import EXPORTER_PORT, Settings, Tls
from quiesce.text import safe

if TYPE_CHECKING:
    from quiesce.adapters.redis.store import SidekiqStore
    from quiesce.model.snapshot import FleetSnapshot


app = typer.Typer(
    cls=Group,
    help=(
        "Quiet a Sidekiq fleet before a deploy and prove it went quiet. Talks Sidekiq's "
        "Redis protocol directly: no Ruby, a constant number of Redis round trips "
        "however large the fleet.\n\n"
        "Connection options (--redis-url, --namespace, --tls-*, --*-timeout, -v) go before "
        "or after the command; after it, they win.\n\n" + exit_codes_help()
    ),
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
)

log = logging.getLogger("quiesce")
F = TypeVar("F", bound=Callable[..., None])


# -- option validation: every refusal is one line and exit 2 ------------------------------


def _sidekiq_version(value: str) -> str:
    from quiesce.sidekiq.versions import is_supported, parse_version, supported_versions_help

    numbers = parse_version(value)
    if numbers is None or not is_supported(numbers):
        raise typer.BadParameter(f"{value!r}: {supported_versions_help()}")
    return value


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"quiesce {__version__}")
        raise typer.Exit()


@app.callback()
@with_params(connection_params(top=True))
def main_options(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print version."),
    ] = False,
    **connection: Any,
) -> None:
    """Connection options go before or after the command: quiesce -r URL status."""
    configure_logging(verbose=connection["verbose"])
    ctx.obj = AppContext(
        urls=tuple(connection["redis_url"] or ()),
        namespace=connection["namespace"],
        tls=Tls(
            connection["tls_ca_cert"],
            connection["tls_cert"],
            connection["tls_key"],
            connection["tls_skip_verify"] or connection["tls_insecure"],
        ),
        connect_timeout_s=connection["connect_timeout"],
        read_timeout_s=connection["read_timeout"],
    )


def _settings(ctx: typer.Context) -> Settings:
    return app_context(ctx).settings()


def _empty_fleet_notes(
    stores: Sequence[SidekiqStore], snapshot: FleetSnapshot, ctx: typer.Context
) -> list[str]:
    """Where Sidekiq might be when nothing is registered here (bounded lookups)."""
    from quiesce.runs.read import empty_fleet_notes

    if any(p.alive for p in snapshot.processes):
        return []
    return empty_fleet_notes(stores, default_url=_settings(ctx).default_url)


def _scope(settings: Settings, app_name: str | None, filters: Filters | None) -> str:
    """The fleet's scope (whose deploy history to read and write): the Fly app when known
    (--app, $FLY_APP_NAME), else the namespace and the filters that define the fleet."""
    from quiesce.model.filters import scope_of

    return scope_of(app_name or os.environ.get("FLY_APP_NAME"), settings.namespace, filters)


def _scope_notes(snapshot: FleetSnapshot) -> list[str]:
    """A command that found no deploy of its scope says whose the newest deploy is."""
    other = snapshot.other_scope
    if snapshot.latest_deploy is not None or other is None:
        return []
    hint = f" (--app {other.removeprefix('app:')})" if other.startswith("app:") else ""
    return [
        f"no deploy recorded for {snapshot.scope}; the newest deploy in this Redis is of "
        f"{other}{hint}"
    ]


def _refuse_unmatched(snapshot: FleetSnapshot, filters: Filters) -> None:
    """Filters that leave nothing of a live fleet are a typo: exit 2, listing what exists."""
    from quiesce.model.filters import unmatched_filters

    problem = unmatched_filters(snapshot.processes, filters)
    if problem is not None:
        raise ConfigError(problem)


def _release_label(explicit: str | None) -> str | None:
    for value in (explicit, os.environ.get("RELEASE_LABEL"), os.environ.get("FLY_IMAGE_REF")):
        if value and value.strip():
            return value.strip()
    return None


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
    hostname: Annotated[
        list[str] | None,
        typer.Option(metavar="GLOB", help="Only hostnames (Fly Machine ids) matching this glob."),
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", metavar="TAG", help="Only processes with this tag.")
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", metavar="LABEL", help="Only processes with this label."),
    ] = None,
    queue: Annotated[
        list[str] | None,
        typer.Option("--queue", metavar="QUEUE", help="Only processes that listen on this queue."),
    ] = None,
    identity: Annotated[
        list[str] | None,
        typer.Option("--identity", metavar="IDENTITY", help="Only this process identity."),
    ] = None,
    exclude_hostname: Annotated[
        list[str] | None,
        typer.Option(
            metavar="GLOB", help="Leave alone hostnames (Machine ids) matching this glob."
        ),
    ] = None,
    exclude_tag: Annotated[
        list[str] | None, typer.Option(metavar="TAG", help="Leave alone processes with this tag.")
    ] = None,
    exclude_label: Annotated[
        list[str] | None,
        typer.Option(metavar="LABEL", help="Leave alone processes with this label."),
    ] = None,
    exclude_queue: Annotated[
        list[str] | None,
        typer.Option(metavar="QUEUE", help="Leave alone processes that listen on this queue."),
    ] = None,
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
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
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
    app_name: Annotated[
        str | None,
        typer.Option(
            "--app",
            metavar="NAME",
            help="Fly app being deployed: the deploy history's scope, and whose Machines "
            "to record (with $FLY_API_TOKEN). Default: $FLY_APP_NAME.",
            show_default=False,
        ),
    ] = None,
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
        filters=Filters(
            hostnames=tuple(hostname or ()),
            tags=tuple(tag or ()),
            labels=tuple(label or ()),
            queues=tuple(queue or ()),
            identities=tuple(identity or ()),
            exclude_hostnames=tuple(exclude_hostname or ()),
            exclude_tags=tuple(exclude_tag or ()),
            exclude_labels=tuple(exclude_label or ()),
            exclude_queues=tuple(exclude_queue or ()),
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


class Expect(enum.StrEnum):
    """``status --expect``: the states a deploy step can wait for."""

    RUNNING = "running"
    QUIET = "quiet"


@app.command()
@connection_options
def status(
    ctx: typer.Context,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print JSON (documented fields).")
    ] = False,
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
    hostname: Annotated[
        list[str] | None,
        typer.Option(metavar="GLOB", help="Only hostnames (Fly Machine ids) matching this glob."),
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", metavar="TAG", help="Only processes with this tag.")
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", metavar="LABEL", help="Only processes with this label."),
    ] = None,
    queue: Annotated[
        list[str] | None,
        typer.Option("--queue", metavar="QUEUE", help="Only processes that listen on this queue."),
    ] = None,
    identity: Annotated[
        list[str] | None,
        typer.Option("--identity", metavar="IDENTITY", help="Only this process identity."),
    ] = None,
    exclude_hostname: Annotated[
        list[str] | None,
        typer.Option(metavar="GLOB", help="Leave out hostnames (Machine ids) matching this glob."),
    ] = None,
    exclude_tag: Annotated[
        list[str] | None, typer.Option(metavar="TAG", help="Leave out processes with this tag.")
    ] = None,
    exclude_label: Annotated[
        list[str] | None,
        typer.Option(metavar="LABEL", help="Leave out processes with this label."),
    ] = None,
    exclude_queue: Annotated[
        list[str] | None,
        typer.Option(metavar="QUEUE", help="Leave out processes that listen on this queue."),
    ] = None,
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
    app_name: Annotated[
        str | None,
        typer.Option(
            "--app",
            metavar="NAME",
            help="Fly app whose deploy history to read. Default: $FLY_APP_NAME.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Show every Sidekiq process, grouped by Machine, and its quiet state.

    Per process: version, tag/labels, state (running, quiet, dead, embedded, stalled,
    unreadable), busy/concurrency, time since the last beat, how long quiet (from
    the latest deploy record), pending signals and RSS. Reads only; writes nothing.
    """
    from quiesce.runs.read import no_cycle_collection, read_fleet
    from quiesce.views.fleet import status_json, status_text
    from quiesce.views.jobs import add_jobs_json, excluded_text, filter_snapshot, jobs_text

    jobs = jobs or show_args
    excludes = Filters(
        hostnames=tuple(hostname or ()),
        tags=tuple(tag or ()),
        labels=tuple(label or ()),
        queues=tuple(queue or ()),
        identities=tuple(identity or ()),
        exclude_hostnames=tuple(exclude_hostname or ()),
        exclude_tags=tuple(exclude_tag or ()),
        exclude_labels=tuple(exclude_label or ()),
        exclude_queues=tuple(exclude_queue or ()),
    )
    with guard(), open_stores(settings := _settings(ctx)) as stores:
        scope = _scope(settings, app_name, None)
        while True:
            with no_cycle_collection():  # back on between --watch rounds
                snapshot = read_fleet(stores, allow_newer=allow_newer, jobs=jobs, scope=scope)
                _refuse_unmatched(snapshot, excludes)
                notes = _empty_fleet_notes(stores, snapshot, ctx)
                snapshot, excluded = filter_snapshot(snapshot, excludes)
                if json_output:
                    # --jobs edits the process entries once they are built: not lazily.
                    data = status_json(snapshot, machines_only=machines, lazy=not jobs)
                    if excludes.active:
                        data["excluded_by"] = dict(excluded)
                    if jobs:
                        add_jobs_json(data, snapshot, args=show_args)
                    echo_json(data)
                else:
                    if watch and sys.stdout.isatty():
                        typer.echo("\x1b[H\x1b[2J", nl=False)
                    typer.echo(status_text(snapshot, machines_only=machines, width=_columns()))
                    if excluded:
                        typer.echo(excluded_text(excluded))
                    if jobs:
                        text = jobs_text(snapshot, args=show_args, width=_columns())
                        typer.echo("\n".join(text))
                    for note in [*notes, *_scope_notes(snapshot)]:
                        typer.echo(safe(f"note: {note}"))
            if not watch:
                break
            time.sleep(max(0.2, interval))
    if expect is not None:
        from quiesce.model.gate import check_expect

        verdict = check_expect(snapshot, expect.value, min_live=min_live)
        typer.echo(safe(f"quiesce: {verdict.message}"), err=True)
        if not verdict.ok:
            raise typer.Exit(int(ExitCode.NOT_CONFIRMED))


SIM_TAG = "quiesce-sim"
EXPORTER_LISTEN = f"0.0.0.0:{EXPORTER_PORT}"
"""``quiesce exporter``'s default address (``quiesce.adapters.prometheus.DEFAULT_PORT``)."""


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
        fleet.start()
        try:
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


def _duration(value: str) -> float:
    """``20m``, ``90s``, ``1h30m`` or plain seconds (the duration options' own parser)."""
    try:
        return positive_duration(value)
    except typer.BadParameter as exc:
        raise ConfigError(exc.message) from None


@contextlib.contextmanager
def _fly_client(app_name: str | None, *, use: bool = True) -> Iterator[tuple[Any, str | None]]:
    """The Fly client when the token and app are known, else ``(None, why not)``."""
    if not use:
        yield None, "--no-fly"
        return
    try:
        from quiesce.adapters.fly import FlyClient, FlyConfig
    except ModuleNotFoundError as exc:
        if _root(exc.name) not in _LEFT_OUT:
            raise
        if not os.environ.get("FLY_API_TOKEN"):  # heartbeats alone: nothing is lost
            yield None, "this build has no Fly API client (no FLY_API_TOKEN either)"
            return
        raise ConfigError(_left_out("the Fly Machines API", _root(exc.name))) from None

    config, why = FlyConfig.from_env(os.environ, app=app_name)
    if config is None:
        yield None, why
        return
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    client = FlyClient(config)
    try:
        yield client, None
    finally:
        client.close()


@contextlib.contextmanager
def _quiet_fly(app_name: str | None) -> Iterator[tuple[Any, str | None]]:
    """The release command's Fly client: a bad Fly setting is said in the report, never a
    failed deploy (the signal matters more than what Fly would add to the record)."""
    from quiesce.adapters.fly import FlyConfig

    try:
        FlyConfig.from_env(os.environ, app=app_name)
    except ConfigError as exc:
        yield None, str(exc)
        return
    with _fly_client(app_name) as pair:
        yield pair


_LEFT_OUT = frozenset({"httpx", "httpcore", "prometheus_client"})
"""What the release binary (bin/build-binary's release profile) does not carry."""


def _root(module: str | None) -> str:
    return (module or "").split(".", 1)[0]


def _left_out(what: str, module: str) -> str:
    return (
        f"{what} needs {module}, which this release binary leaves out (it carries what the "
        "release command needs): run it from the quiesce image (see examples/fly.exporter.toml) "
        "or an install from this repository (docs/install.md)"
    )


_APP_HELP = "Fly app whose Machines to list. Default: $FLY_APP_NAME. Token: $FLY_API_TOKEN."


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
    app_name: Annotated[str | None, typer.Option("--app", metavar="NAME", help=_APP_HELP)] = None,
    process_group: Annotated[
        str | None, typer.Option(metavar="GROUP", help="Only this Fly process group (e.g. worker).")
    ] = None,
    fly: Annotated[
        bool, typer.Option(help="Use the Fly Machines API when a token and app are known.")
    ] = True,
    hostname: Annotated[
        list[str] | None,
        typer.Option(metavar="GLOB", help="Only hostnames (Machine ids) matching this glob."),
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option(
            "--tag", metavar="TAG", help="Only processes with this Sidekiq tag (other apps)."
        ),
    ] = None,
    exclude_hostname: Annotated[
        list[str] | None,
        typer.Option(metavar="GLOB", help="Leave out hostnames (Machine ids) matching this glob."),
    ] = None,
    exclude_tag: Annotated[
        list[str] | None, typer.Option(metavar="TAG", help="Leave out processes with this tag.")
    ] = None,
    release: Annotated[
        str | None,
        typer.Option(metavar="LABEL", help="The new release label (default: the deploy record's)."),
    ] = None,
    allow_newer: Annotated[
        bool, typer.Option("--allow-newer-sidekiq", help="Treat versions after 8.x as 8.x.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
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
            filters = Filters(
                tags=tuple(tag or ()),
                hostnames=tuple(hostname or ()),
                exclude_tags=tuple(exclude_tag or ()),
                exclude_hostnames=tuple(exclude_hostname or ()),
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
    app_name: Annotated[str | None, typer.Option("--app", metavar="NAME", help=_APP_HELP)] = None,
    hostname: Annotated[
        list[str] | None,
        typer.Option(metavar="GLOB", help="Only hostnames (Machine ids) matching this glob."),
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", metavar="TAG", help="Only processes with this tag.")
    ] = None,
    exclude_hostname: Annotated[
        list[str] | None,
        typer.Option(
            metavar="GLOB", help="Leave alone hostnames (Machine ids) matching this glob."
        ),
    ] = None,
    exclude_tag: Annotated[
        list[str] | None, typer.Option(metavar="TAG", help="Leave alone processes with this tag.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
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
    from quiesce.model.recover import RecoverReport, stranded
    from quiesce.model.rejoin import Target, deploy_target, filters_problem
    from quiesce.runs.read import read_fleet
    from quiesce.runs.recover import restart_all, stop_all
    from quiesce.views.rejoin import recover_json, recover_text

    with guard():
        if restart and stop:
            raise ConfigError("choose one of --restart and --stop")
        if yes and not (restart or stop):
            raise ConfigError("--yes needs --restart or --stop")
        after_s = after
        action = "restart" if restart else "stop" if stop else "none"
        with (
            open_stores(settings := _settings(ctx)) as stores,
            _fly_client(app_name) as (client, why),
        ):
            if restart and client is None:
                raise ConfigError(f"--restart needs the Fly API: {why}")
            filters = Filters(
                tags=tuple(tag or ()),
                hostnames=tuple(hostname or ()),
                exclude_tags=tuple(exclude_tag or ()),
                exclude_hostnames=tuple(exclude_hostname or ()),
            )
            scope = _scope(
                settings, app_name, Filters(hostnames=filters.hostnames, tags=filters.tags)
            )
            snapshot = read_fleet(stores, jobs=True, scope=scope)
            problem = filters_problem(filters, snapshot, snapshot.latest_deploy)
            if problem is not None:
                raise ConfigError(problem)
            notes: list[str] = []
            machines = None
            if client is not None:
                machines = client.list_machines()
            else:
                notes.append(f"Fly API not used ({why}): the Machines' state and image not checked")
            target = Target()
            if snapshot.latest_deploy is not None:
                # The record's target only: Fly's newest release may be the very one the
                # stranded Machines run when the deploy failed before updating any.
                target, _ = deploy_target(snapshot.latest_deploy, None)
            candidates, skipped = stranded(
                snapshot,
                snapshot.history,
                after_s=after_s,
                filters=filters,
                machines=machines,
                target=target,
            )
            notes.extend(skipped)
            results: dict[str, str] = {}
            if yes and candidates and restart:
                results = restart_all(
                    client,
                    candidates,
                    None
                    if json_output
                    else lambda m, r: print(safe(f"restart {m}: {r}"), file=sys.stderr),
                )
            elif yes and candidates and stop:
                results = stop_all(stores, candidates)
        report = RecoverReport(
            action, yes and bool(candidates), tuple(candidates), results, tuple(notes)
        )
    with output():
        if json_output:
            echo_json(recover_json(report))
        else:
            typer.echo(recover_text(report))
    raise typer.Exit(0 if report.ok else int(ExitCode.FLY_API))


@app.command()
@connection_options
def exporter(
    ctx: typer.Context,
    listen: Annotated[
        str,
        typer.Option(
            envvar="QUIESCE_EXPORTER_LISTEN",
            help="Address to serve /metrics and /healthz on: host:port, :port or port.",
        ),
    ] = EXPORTER_LISTEN,
    postgres_url: Annotated[
        str | None,
        typer.Option(
            envvar="QUIESCE_POSTGRES_URL",
            help="Also export PostgreSQL backends by application_name and max_connections "
            "(needs the postgres extra). Prefer the env var: argv is visible.",
            show_default=False,
        ),
    ] = None,
    per_machine: Annotated[
        bool,
        typer.Option(
            "--per-machine",
            help="Add quiesce_machine_processes{machine,state} (one series per Machine: "
            "small fleets only).",
        ),
    ] = False,
    allow_newer: Annotated[
        bool, typer.Option("--allow-newer-sidekiq", help="Treat versions after 8.x as 8.x.")
    ] = False,
) -> None:
    """Serve Prometheus metrics about the fleet, its queues and its deploys.

    /metrics (Prometheus text, or OpenMetrics when asked by the Accept header) reads Redis
    afresh on every scrape in two round trips; /healthz says whether the last read
    worked. Stops cleanly on TERM or Ctrl-C. Reads only; several exporters may watch one
    Redis.
    """
    import threading

    from quiesce.adapters.postgres import PostgresReader

    try:
        from quiesce.adapters.prometheus import (
            ExporterServer,
            QuiesceCollector,
            parse_listen,
            serve,
        )
    except ModuleNotFoundError as exc:
        if _root(exc.name) not in _LEFT_OUT:
            raise
        with guard():
            raise ConfigError(_left_out("quiesce exporter", _root(exc.name))) from None

    with guard(), open_stores(settings := _settings(ctx)) as stores:
        if len(stores) > 1:
            raise ConfigError("the exporter reads one Redis: run one exporter per Redis URL")
        try:
            address = parse_listen(listen)
        except ValueError as exc:
            raise ConfigError(f"--listen {listen!r}: {exc}") from None
        reader = (
            PostgresReader(postgres_url, timeout_s=settings.read_timeout_s)
            if (postgres_url)
            else None
        )
        collector = QuiesceCollector(
            stores[0], postgres=reader, per_machine=per_machine, allow_newer=allow_newer
        )
        try:
            server = ExporterServer(address, collector)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
        stop = threading.Event()

        def on_signal(signum: int, frame: object) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        typer.echo(
            safe(f"quiesce exporter: serving {server.url}/metrics for {stores[0].label}"),
            err=True,
        )
        try:
            serve(server, stop)
        finally:
            if reader is not None:
                reader.close()
        typer.echo("quiesce exporter: stopped", err=True)


@app.command()
@connection_options
def doctor(
    ctx: typer.Context,
    fly_toml: Annotated[
        str, typer.Argument(metavar="FLY_TOML", help="The app's fly.toml.")
    ] = "fly.toml",
    sidekiq_timeout: Annotated[
        float | None,
        typer.Option(
            metavar="DURATION",
            help="Sidekiq's shutdown timeout (-t). Default: -t in the worker's [processes] "
            "command, else 25.",
            show_default=False,
            parser=positive_duration,
        ),
    ] = None,
    group: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME",
            help="The Sidekiq process group(s). Default: [processes] entries running sidekiq.",
        ),
    ] = None,
    release: Annotated[
        list[str] | None,
        typer.Option(metavar="LABEL", help="A label that counts as a release label (repeat)."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the findings as JSON.")
    ] = False,
) -> None:
    """Check fly.toml (and, given a Redis, the live fleet) for settings that lose jobs or
    stall deploys: kill_timeout, kill_signal, release_command(_timeout), bluegreen checks,
    embedded processes, release labels, jobs longer than kill_timeout.

    One line per finding, with its fix. Exit 0: no errors (warnings allowed); 3: errors
    found; 2: fly.toml missing or invalid. The fleet is read only when a Redis is given
    (--redis-url or REDIS_URL); doctor never writes.
    """
    from quiesce.model import doctor as dr
    from quiesce.runs.doctor import check_fly_toml, check_live_fleet

    with guard():
        checked = check_fly_toml(
            fly_toml, sidekiq_timeout_s=sidekiq_timeout, groups=group or (), parse=refusal
        )
        deploy, findings = checked.deploy, checked.findings
        settings = _settings(ctx)
        fleet_checked = settings.default_url is None
        if fleet_checked:
            with open_stores(settings) as stores:
                findings += check_live_fleet(stores, deploy, releases=tuple(release or ()))
    errors = sum(f.level is dr.Level.ERROR for f in findings)
    with output():
        if json_output:
            doc = {
                "file": fly_toml,
                "fleet_checked": fleet_checked,
                "errors": errors,
                "warnings": len(findings) - errors,
                "findings": [f.as_json() for f in findings],
            }
            echo_json(doc)
        else:
            for finding in findings:
                typer.echo(safe(finding.line))
            if not fleet_checked:
                typer.echo("note: no Redis given (-r URL or REDIS_URL): checked fly.toml only")
            typer.echo(dr.summary(findings))
    if errors:
        raise typer.Exit(int(ExitCode.NOT_CONFIRMED))


_RELEASE_ENV_PREFIXES = ("QUIESCE_", "REDIS_", "FLY_API_TOKEN", "FLY_APP_NAME")


def refusal(argv: Sequence[str]) -> str | None:
    """What quiesce would say to ``quiesce <argv>`` before running anything: the message
    of the usage error, or None when it parses. The same click command as a real run, so
    doctor and the deploy can never disagree. ``--help``/``--version`` parse (and print
    nothing here); this machine's QUIESCE_*/REDIS_* environment is set aside, since the
    release Machine has its own."""
    import io

    command = typer.main.get_command(app)
    saved = {k: v for k, v in os.environ.items() if k.startswith(_RELEASE_ENV_PREFIXES)}
    said = io.StringIO()
    try:
        for key in saved:
            del os.environ[key]
        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(said),
            command.make_context("quiesce", list(argv)) as ctx,
        ):
            # click keeps the command name and its arguments here once the group parsed.
            rest = [*ctx._protected_args, *ctx.args]
            if not rest:
                return None
            assert isinstance(command, Group)
            name, sub, args = command.resolve_command(ctx, rest)
            if sub is None or name is None:
                return f"no such command {rest[0]!r}"
            with sub.make_context(name, args, parent=ctx):
                return None
    except typer.Exit as exc:
        # The group turns a usage error into its one line on stderr and exit 2.
        if exc.exit_code != ExitCode.USAGE:
            return None  # --help, --version
        return said.getvalue().strip().removeprefix("quiesce: error: ") or "usage error"
    except UsageError as exc:
        return None if is_help_request(exc) else str(exc.format_message())  # type: ignore[attr-defined]
    finally:
        os.environ.update(saved)


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
            help="How long the rejoin tracking waits (15s, 1m).",
            parser=positive_duration,
            show_default="15s",
        ),
    ] = 15.0,
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


def _columns() -> int | None:
    """The width tables must fit: $COLUMNS when set (as shells and CI runners set it),
    else the terminal's; None for a pipe or a log (the content's own width)."""
    value = os.environ.get("COLUMNS", "")
    if value.isdigit() and int(value) > 0:
        return max(40, int(value))
    if sys.stdout.isatty():
        import shutil

        return max(40, shutil.get_terminal_size().columns)
    return None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> None:
    app(args=list(argv) if argv is not None else None, prog_name="quiesce")
