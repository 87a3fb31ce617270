"""The ``quiesce`` command line: parse, call one service function, render, exit.

Start-up matters (the release command runs on every deploy), so redis-py and the
adapters are imported inside the commands, not at module import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from quiesce import __version__
from quiesce.confirm import Until
from quiesce.errors import ConfigError, ExitCode, QuiesceError
from quiesce.fleet import ProcessState
from quiesce.plan import Filters
from quiesce.settings import Settings, Tls, build_settings

if TYPE_CHECKING:
    from quiesce.quiet_run import Event
    from quiesce.store import SidekiqStore

EXIT_CODES_HELP = """\b
Exit status:
  0  success: every target confirmed quiet or gone
  2  usage or configuration error
  3  processes left unconfirmed at the deadline (quiet), or not in the
     --expect state (status)
  4  Redis unreachable: refused, timed out, unknown host, went away
  5  Redis refused us: wrong password, TLS mismatch, ACL denies a command
  6  Redis holds data that is not Sidekiq's shape
  1  internal error (a bug: please report it)"""

app = typer.Typer(
    help=(
        "Quiet a Sidekiq fleet before a deploy and prove it went quiet. Talks Sidekiq's "
        "Redis protocol directly: no Ruby, a constant number of Redis round trips "
        "however large the fleet.\n\n" + EXIT_CODES_HELP
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
)

log = logging.getLogger("quiesce")


@dataclasses.dataclass(frozen=True, slots=True)
class AppContext:
    """Global options, turned into ``Settings`` inside each command's error guard (so
    ``quiet --best-effort`` covers a bad URL too)."""

    urls: tuple[str, ...]
    namespace: str
    tls: Tls
    connect_timeout_s: float
    read_timeout_s: float

    def settings(self) -> Settings:
        return build_settings(
            urls=self.urls,
            namespace=self.namespace,
            tls=self.tls,
            connect_timeout_s=self.connect_timeout_s,
            read_timeout_s=self.read_timeout_s,
        )


def _fail(exc: BaseException, *, best_effort: bool = False) -> NoReturn:
    if isinstance(exc, QuiesceError):
        code, kind = exc.exit_code, "error"
    else:
        code, kind = ExitCode.INTERNAL, f"internal error ({type(exc).__name__})"
    typer.echo(f"quiesce: {kind}: {exc}", err=True)
    if best_effort:
        typer.echo("quiesce: --best-effort: exiting 0 anyway", err=True)
        raise typer.Exit(0)
    raise typer.Exit(int(code))


@contextlib.contextmanager
def _guard(*, best_effort: bool = False) -> Iterator[None]:
    """Every failure becomes one line on stderr and a documented exit code."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        typer.echo("quiesce: interrupted", err=True)
        raise typer.Exit(130) from None
    except Exception as exc:
        log.debug("failure", exc_info=True)
        _fail(exc, best_effort=best_effort)


@contextlib.contextmanager
def _stores(settings: Settings, *, first_only: bool = False) -> Iterator[list[SidekiqStore]]:
    from quiesce.store import open_stores

    if first_only:
        settings = dataclasses.replace(settings, redis=settings.redis[:1])
    stores = open_stores(settings)
    try:
        yield stores
    finally:
        for store in stores:
            store.close()


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"quiesce {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    redis_url: Annotated[
        list[str] | None,
        typer.Option(
            "--redis-url",
            "-r",
            metavar="URL",
            help="Sidekiq's Redis (redis://, rediss://, unix://). Repeat it, or separate URLs "
            "with commas, when Sidekiq is sharded over several servers. Default: $REDIS_URL "
            "(or the variable $REDIS_PROVIDER names), else redis://127.0.0.1:6379/0.",
            show_default=False,
        ),
    ] = None,
    namespace: Annotated[
        str,
        typer.Option(
            envvar="QUIESCE_NAMESPACE",
            help="redis-namespace prefix (Sidekiq <= 6 only): keys get '<namespace>:'.",
        ),
    ] = "",
    tls_ca_cert: Annotated[
        str | None, typer.Option(envvar="REDIS_TLS_CA_CERT", help="CA bundle for rediss://.")
    ] = None,
    tls_cert: Annotated[
        str | None, typer.Option(envvar="REDIS_TLS_CERT", help="Client certificate (mutual TLS).")
    ] = None,
    tls_key: Annotated[
        str | None, typer.Option(envvar="REDIS_TLS_KEY", help="Client key (mutual TLS).")
    ] = None,
    tls_insecure: Annotated[
        bool,
        typer.Option(
            "--tls-insecure",
            envvar="REDIS_TLS_INSECURE",
            help="Do not verify the server certificate (self-signed managed Redis).",
        ),
    ] = False,
    connect_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for a Redis connection.")
    ] = 3.0,
    read_timeout: Annotated[float, typer.Option(help="Seconds to wait for a Redis reply.")] = 5.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print version."),
    ] = False,
) -> None:
    """Global options go before the command: quiesce --redis-url URL status."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="quiesce: %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    ctx.obj = AppContext(
        urls=tuple(redis_url or ()),
        namespace=namespace,
        tls=Tls(tls_ca_cert, tls_cert, tls_key, tls_insecure),
        connect_timeout_s=connect_timeout,
        read_timeout_s=read_timeout,
    )


def _settings(ctx: typer.Context) -> Settings:
    obj = ctx.obj
    assert isinstance(obj, AppContext)
    return obj.settings()


def _release_label(explicit: str | None) -> str | None:
    for value in (explicit, os.environ.get("RELEASE_LABEL"), os.environ.get("FLY_IMAGE_REF")):
        if value and value.strip():
            return value.strip()
    return None


class _ProgressLine:
    """What the run says while it runs: the push first (stdout, so release logs read in
    order), notices as they happen, then a live line on a terminal or a line every 5 s
    in logs (Fly buffers release output)."""

    def __init__(self, until: str, timeout_s: float, wait: bool) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.how = f"until {until}, timeout {timeout_s:g}s" if wait else "no wait"
        self.header_shown = False

    def __call__(self, event: Event) -> None:
        from quiesce.quiet_run import Notice, Progress, Pushed

        if isinstance(event, Pushed):
            self.clear()
            typer.echo(
                f"signalled TSTP to {event.targets} {_plural(event.targets, 'process')} on "
                f"{event.machines} {_plural(event.machines, 'machine')} ({self.how})"
            )
            sys.stdout.flush()
            self.header_shown = True
        elif isinstance(event, Notice):
            self.clear()
            print(f"quiesce: {event.text}", file=sys.stderr, flush=True)
        elif isinstance(event, Progress):
            text = (
                f"waiting: {event.confirmed} confirmed, {event.vanished} exited, "
                f"{event.pending} pending, {event.remaining_s:.0f}s left"
            )
            if self.tty:
                sys.stderr.write(f"\r\x1b[2K{text}")
                sys.stderr.flush()
            elif event.elapsed_s - self.last >= 5.0:
                self.last = event.elapsed_s
                print(text, file=sys.stderr, flush=True)

    def clear(self) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()

    def close(self) -> None:
        self.clear()


def _plural(n: int, word: str) -> str:
    return word if n == 1 else (word + "es" if word.endswith("s") else word + "s")


@app.command()
def quiet(
    ctx: typer.Context,
    until: Annotated[
        Until,
        typer.Option(
            help="delivered: a heartbeat after the push popped the signal (one beat: 5 s on "
            "Sidekiq <= 6, 10 s on 7+). quiet: the process reports quiet (one beat later).",
        ),
    ] = Until.DELIVERED,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for confirmation.")] = 30.0,
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
        str,
        typer.Option(
            envvar="QUIESCE_STRATEGY",
            help="Deploy strategy to record (immediate, bluegreen, rolling, canary).",
        ),
    ] = "unknown",
    mark: Annotated[
        bool, typer.Option(help="Write Sidekiq's deploy mark (shown in its Web UI metrics).")
    ] = True,
    hostname: Annotated[
        list[str] | None,
        typer.Option(metavar="GLOB", help="Only hostnames (Fly Machine ids) matching this glob."),
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option(metavar="TAG", help="Only processes with this tag.")
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option(metavar="LABEL", help="Only processes with this label.")
    ] = None,
    queue: Annotated[
        list[str] | None,
        typer.Option(metavar="QUEUE", help="Only processes that listen on this queue."),
    ] = None,
    identity: Annotated[
        list[str] | None, typer.Option(metavar="IDENTITY", help="Only this process identity.")
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
) -> None:
    """Send TSTP to every live Sidekiq process and confirm each one took it.

    The release command: replaces `rake sidekiq:quiet`. Filters narrow the targets
    (repeat one to accept any of its values; different filters must all match).
    Embedded processes are skipped (Sidekiq ignores signals there), already-quiet ones
    are left alone. A signal that expires unconsumed is pushed again while the deadline
    allows. Records the deploy under quiesce:deploy:* (14 days) and writes Sidekiq's
    deploy mark for the release label (--no-mark to skip).
    """
    from quiesce.quiet_run import QuietOptions, quiet_fleet
    from quiesce.render import report_json, report_text

    options = QuietOptions(
        filters=Filters(
            hostnames=tuple(hostname or ()),
            tags=tuple(tag or ()),
            labels=tuple(label or ()),
            queues=tuple(queue or ()),
            identities=tuple(identity or ()),
        ),
        until=until,
        timeout_s=timeout,
        wait=wait,
        dry_run=dry_run,
        release=_release_label(release),
        strategy=strategy,
        mark=mark,
        allow_newer=allow_newer,
    )
    progress = _ProgressLine(until.value, timeout, wait)
    with _guard(best_effort=best_effort):
        if timeout < 0:
            raise ConfigError("--timeout must be zero or more")
        with _stores(_settings(ctx)) as stores:
            try:
                report = quiet_fleet(stores, options, on_event=None if json_output else progress)
            finally:
                progress.close()
    if json_output:
        typer.echo(json.dumps(report_json(report, best_effort), indent=2))
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


@app.command()
def status(
    ctx: typer.Context,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print JSON (documented fields).")
    ] = False,
    machines: Annotated[
        bool, typer.Option("--machines", "-m", help="One line per Machine (large fleets).")
    ] = False,
    allow_newer: Annotated[
        bool, typer.Option("--allow-newer-sidekiq", help="Treat versions after 8.x as 8.x.")
    ] = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes with --watch.")] = 2.0,
    expect: Annotated[
        ProcessState | None,
        typer.Option(
            help="Exit 3 unless every live, non-embedded process is in this state "
            "(running or quiet).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Show every Sidekiq process, grouped by Machine, and its quiet state.

    Per process: version, tag/labels, state (running, quiet, dead, embedded, stalled,
    unreadable), busy/concurrency, time since the last beat, how long quiet (from
    the latest deploy record), pending signals and RSS. Reads only; writes nothing.
    """
    from quiesce.observe import read_fleet
    from quiesce.render import status_json, status_text

    if expect not in (None, ProcessState.RUNNING, ProcessState.QUIET):
        _fail(ConfigError("--expect takes 'running' or 'quiet'"))
    with _guard(), _stores(_settings(ctx)) as stores:
        while True:
            snapshot = read_fleet(stores, allow_newer=allow_newer)
            if json_output:
                typer.echo(json.dumps(status_json(snapshot), indent=2))
            else:
                if watch and sys.stdout.isatty():
                    typer.echo("\x1b[H\x1b[2J", nl=False)
                typer.echo(status_text(snapshot, machines_only=machines))
            if not watch:
                break
            time.sleep(max(0.2, interval))
    if expect is not None:
        off = [
            p
            for p in snapshot.processes
            if p.alive and p.state is not ProcessState.EMBEDDED and p.state is not expect
        ]
        if off:
            typer.echo(
                f"quiesce: {len(off)} live process(es) not {expect.value}: "
                + ", ".join(f"{p.identity} ({p.state.value})" for p in off[:5])
                + (" ..." if len(off) > 5 else ""),
                err=True,
            )
            raise typer.Exit(int(ExitCode.NOT_CONFIRMED))


SIM_TAG = "quiesce-sim"


@app.command()
def simulate(
    ctx: typer.Context,
    processes: Annotated[int, typer.Option(help="How many Sidekiq processes.")] = 12,
    per_machine: Annotated[int, typer.Option(help="Processes per simulated Machine.")] = 2,
    sidekiq_version: Annotated[
        str, typer.Option(help="Sidekiq version to imitate (5.2 to 8.1).")
    ] = "7.3.10",
    beat_interval: Annotated[
        float | None,
        typer.Option(
            help="Seconds between beats. Default: the version's (5 or 10).", show_default=False
        ),
    ] = None,
    duration: Annotated[
        float, typer.Option(help="Stop after this many seconds (0: Ctrl-C).")
    ] = 0.0,
    force: Annotated[
        bool, typer.Option("--force", help="Run even if real Sidekiq processes share this Redis.")
    ] = False,
) -> None:
    """Run a simulated Sidekiq fleet that heartbeats like the real one (for demos and tests).

    Writes fake processes (tag quiesce-sim) into the Redis: never point it at production.
    It refuses to start when other live Sidekiq processes are registered, unless --force.
    """
    from quiesce.observe import read_fleet
    from quiesce.simulator import SimulatedFleet, make_processes
    from quiesce.store import connect

    with _guard(), _stores(settings := _settings(ctx), first_only=True) as stores:
        store = stores[0]
        others = [
            p
            for p in read_fleet([store]).processes
            if p.alive and p.tag != SIM_TAG and p.problem is None
        ]
        if others and not force:
            raise ConfigError(
                f"{len(others)} other Sidekiq processes are registered in {store.label}; "
                "refusing to mix simulated ones in (use --force)"
            )
        fleet = SimulatedFleet(
            connect(store.target, settings),
            make_processes(
                processes, version=sidekiq_version, per_machine=per_machine, tag=SIM_TAG
            ),
            keys=store.keys,
            beat_interval_s=beat_interval,
        )
        typer.echo(
            f"simulating {processes} Sidekiq {sidekiq_version} processes on "
            f"{-(-processes // per_machine)} machines in {store.label}; Ctrl-C to stop",
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


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> None:
    app(args=list(argv) if argv is not None else None, prog_name="quiesce")
