"""The ``quiesce`` command line: parse, call one service function, render, exit.

Start-up matters (the release command runs on every deploy), so redis-py and the
adapters are imported inside the commands, not at module import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import inspect
import json
import logging
import math
import os
import signal
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

# typer vendors click; usage errors are its classes (typer re-exports only BadParameter).
from typer._click.core import Context as ClickContext
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
from typer.core import TyperGroup

from quiesce import __version__
from quiesce.errors import ConfigError, ExitCode, QuiesceError
from quiesce.model.quiet import Filters
from quiesce.model.verdict import Until
from quiesce.settings import MAX_TIMEOUT_S, Settings, Tls, build_settings
from quiesce.text import safe

if TYPE_CHECKING:
    from quiesce.adapters.redis.store import SidekiqStore
    from quiesce.model.doctor import Deploy, Finding
    from quiesce.model.report import Event
    from quiesce.model.snapshot import FleetSnapshot


def _exit_codes_help() -> str:
    codes = sorted(ExitCode, key=lambda c: (c is ExitCode.INTERNAL, c.value))
    # \b: click keeps the block's line breaks instead of rewrapping it.
    lines = (
        textwrap.fill(
            c.description, 78, initial_indent=f"  {c.value:>3}  ", subsequent_indent=" " * 7
        )
        for c in codes
    )
    return "\b\nExit status:\n" + "\n".join(lines)


class _UsageFailure(ClickException):
    """A usage error shown as quiesce shows every failure: one line, exit 2."""

    exit_code = int(ExitCode.USAGE)

    def show(self, file: IO[Any] | None = None) -> None:
        typer.echo(f"quiesce: error: {safe(self.format_message())}", err=True)


@contextlib.contextmanager
def _one_line_usage() -> Iterator[None]:
    try:
        yield
    except NoArgsIsHelpError:  # `quiesce` alone prints the help
        raise
    except UsageError as exc:
        raise _UsageFailure(exc.format_message()) from None


class _Group(TyperGroup):
    """Click prints a usage error as a usage block, a hint and the message; quiesce's
    callers (deploy logs) get the message alone, like every other failure."""

    def make_context(self, *args: Any, **kwargs: Any) -> ClickContext:
        with _one_line_usage():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: ClickContext) -> Any:
        with _one_line_usage():
            return super().invoke(ctx)


app = typer.Typer(
    cls=_Group,
    help=(
        "Quiet a Sidekiq fleet before a deploy and prove it went quiet. Talks Sidekiq's "
        "Redis protocol directly: no Ruby, a constant number of Redis round trips "
        "however large the fleet.\n\n"
        "Connection options (--redis-url, --namespace, --tls-*, --*-timeout, -v) go before "
        "or after the command; after it, they win.\n\n" + _exit_codes_help()
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


def _finite(value: float | None, *, zero_ok: bool) -> float | None:
    """The one check for seconds: click's FloatRange lets nan through (every comparison
    with nan is false), and inf or 1e308 would reach socket and sleep calls."""
    if value is None:
        return None
    if not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    if value < 0 or (value == 0 and not zero_ok):
        raise typer.BadParameter(f"{value:g} must be {'0 or more' if zero_ok else 'above 0'}")
    return value


def _positive_seconds(value: float | None) -> float | None:
    return _finite(value, zero_ok=False)


def _seconds(value: float | None) -> float | None:
    return _finite(value, zero_ok=True)


def _sidekiq_version(value: str) -> str:
    from quiesce.sidekiq.versions import is_supported, parse_version, supported_versions_help

    numbers = parse_version(value)
    if numbers is None or not is_supported(numbers):
        raise typer.BadParameter(f"{value!r}: {supported_versions_help()}")
    return value


# -- connection options, accepted before and after the command ----------------------------

_URL_HELP = (
    "Sidekiq's Redis (redis://, rediss://, unix://). Repeat it, or separate URLs "
    "with commas, when Sidekiq is sharded over several servers. Default: $REDIS_URL "
    "(or the variable $REDIS_PROVIDER names), else redis://127.0.0.1:6379/0."
)
_NAMESPACE_HELP = "redis-namespace prefix (Sidekiq <= 6 only): keys get '<namespace>:'."
_SKIP_VERIFY_HELP = (
    "Do NOT verify the Redis server's TLS certificate or hostname (anyone on the path can "
    "then pose as Redis). Prefer --tls-ca-cert with the server's CA. Warns on every run."
)


def _connection_params(*, top: bool) -> list[inspect.Parameter]:
    """The same options on the app and on every command. Environment variables are read
    once, by the app's copy: a command's copy is unset unless typed after the command."""

    def env(name: str) -> str | None:
        return name if top else None

    def seconds(name: str, help: str, default: float) -> tuple[str, object, object]:
        option = typer.Option(
            help=help,
            metavar="SECONDS",
            min=0,
            max=MAX_TIMEOUT_S,
            callback=_positive_seconds,
            show_default=top,
        )
        return name, Annotated[float | None, option], default if top else None

    default_str = "" if top else None
    options: list[tuple[str, object, object]] = [
        (
            "redis_url",
            Annotated[
                list[str] | None,
                typer.Option(
                    "--redis-url", "-r", metavar="URL", help=_URL_HELP, show_default=False
                ),
            ],
            None,
        ),
        (
            "namespace",
            Annotated[
                str | None,
                typer.Option(
                    envvar=env("QUIESCE_NAMESPACE"), metavar="PREFIX", help=_NAMESPACE_HELP
                ),
            ],
            default_str,
        ),
        (
            "tls_ca_cert",
            Annotated[
                str | None,
                typer.Option(
                    envvar=env("REDIS_TLS_CA_CERT"), metavar="PATH", help="CA bundle for rediss://."
                ),
            ],
            None,
        ),
        (
            "tls_cert",
            Annotated[
                str | None,
                typer.Option(
                    envvar=env("REDIS_TLS_CERT"),
                    metavar="PATH",
                    help="Client certificate (mutual TLS).",
                ),
            ],
            None,
        ),
        (
            "tls_key",
            Annotated[
                str | None,
                typer.Option(
                    envvar=env("REDIS_TLS_KEY"), metavar="PATH", help="Client key (mutual TLS)."
                ),
            ],
            None,
        ),
        (
            "tls_skip_verify",
            Annotated[
                bool,
                typer.Option(
                    "--tls-skip-verify", envvar=env("REDIS_TLS_SKIP_VERIFY"), help=_SKIP_VERIFY_HELP
                ),
            ],
            False,
        ),
        (
            # The old name, kept working (hidden): "insecure" did not say what is skipped.
            "tls_insecure",
            Annotated[
                bool,
                typer.Option("--tls-insecure", envvar=env("REDIS_TLS_INSECURE"), hidden=True),
            ],
            False,
        ),
        seconds("connect_timeout", "Seconds to wait for a Redis connection.", 3.0),
        seconds("read_timeout", "Seconds to wait for a Redis reply.", 5.0),
        (
            "verbose",
            Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")],
            False,
        ),
    ]
    return [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind, default=default)
        for name, kind, default in options
    ]


CONNECTION_OPTIONS = tuple(p.name for p in _connection_params(top=False))


def _with_params(
    params: list[inspect.Parameter], *, like: Callable[..., None] | None = None
) -> Callable[[F], F]:
    """Adds ``params`` to the signature typer reads options from (``like``'s, else the
    function's own), in place of a ``**kwargs`` that receives them."""

    def decorate(fn: F) -> F:
        sig = inspect.signature(like or fn, eval_str=True)
        kept = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        fn.__signature__ = sig.replace(parameters=[*kept, *params])  # type: ignore[attr-defined]
        fn.__annotations__ = {p.name: p.annotation for p in (*kept, *params)}
        return fn

    return decorate


def _connection_options(fn: Callable[..., None]) -> Callable[..., None]:
    """A command that also takes the connection options: values typed after the command
    win over those before it (``quiesce status -r URL``, as kubectl and flyctl allow)."""

    @functools.wraps(fn)
    def command(**kwargs: Any) -> None:
        given = {name: kwargs.pop(name) for name in CONNECTION_OPTIONS}
        ctx = kwargs["ctx"]
        ctx.obj = _app_context(ctx).override(**given)
        if given["verbose"]:
            _configure_logging(verbose=True)
        fn(**kwargs)

    return _with_params(_connection_params(top=False), like=fn)(command)


@dataclasses.dataclass(frozen=True, slots=True)
class AppContext:
    """Connection options, turned into ``Settings`` inside each command's error guard (so
    ``quiet --best-effort`` covers a bad URL too)."""

    urls: tuple[str, ...] = dataclasses.field(repr=False)  # they may hold a password
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

    def override(
        self,
        *,
        redis_url: list[str] | None,
        namespace: str | None,
        tls_ca_cert: str | None,
        tls_cert: str | None,
        tls_key: str | None,
        tls_skip_verify: bool,
        tls_insecure: bool,
        connect_timeout: float | None,
        read_timeout: float | None,
        verbose: bool,
    ) -> AppContext:
        """Options given after the command (``None``/unset: keep the app-level value)."""
        tls = self.tls
        return AppContext(
            urls=self.urls if redis_url is None else tuple(redis_url),
            namespace=self.namespace if namespace is None else namespace,
            tls=Tls(
                tls.ca_cert if tls_ca_cert is None else tls_ca_cert,
                tls.cert if tls_cert is None else tls_cert,
                tls.key if tls_key is None else tls_key,
                tls.insecure or tls_skip_verify or tls_insecure,
            ),
            connect_timeout_s=(
                self.connect_timeout_s if connect_timeout is None else connect_timeout
            ),
            read_timeout_s=self.read_timeout_s if read_timeout is None else read_timeout,
        )


def _app_context(ctx: typer.Context) -> AppContext:
    obj = ctx.obj
    assert isinstance(obj, AppContext)
    return obj


class _SafeFormatter(logging.Formatter):
    """-v logs quote identities and Redis replies: escaped like every other output."""

    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(safe(line) for line in super().format(record).splitlines())


def _configure_logging(*, verbose: bool) -> None:
    root = logging.getLogger()
    if not any(isinstance(h.formatter, _SafeFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_SafeFormatter("quiesce: %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)


# -- failures ---------------------------------------------------------------------------


def _fail(exc: BaseException, *, best_effort: bool = False) -> NoReturn:
    if isinstance(exc, QuiesceError):
        code, kind = exc.exit_code, "error"
    else:
        code, kind = ExitCode.INTERNAL, f"internal error ({type(exc).__name__})"
    typer.echo(safe(f"quiesce: {kind}: {exc}"), err=True)
    if best_effort:
        typer.echo("quiesce: --best-effort: exiting 0 anyway", err=True)
        raise typer.Exit(0)
    raise typer.Exit(int(code))


def _broken_pipe(*, best_effort: bool = False) -> NoReturn:
    """The reader went away (``quiesce status | head -1``): stop without a word, with the
    status a Unix tool killed by SIGPIPE has. Python would fail again flushing stdout at
    exit, so stdout now points at /dev/null."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise typer.Exit(0 if best_effort else int(ExitCode.BROKEN_PIPE))


_orjson: Any
try:  # --json's encoder; json's own is the fallback
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised by tests/unit/cli/test_json_output.py
    _orjson = None


def _echo_json(data: Any) -> None:
    """Indented for a person at a terminal; otherwise one compact line, from orjson (7x
    json's C encoder, itself far ahead of the pure-Python one ``indent`` forces: ~40% of
    ``status --json`` at 10,000 processes), written a Machine at a time so the whole text
    is never held (the view may hand over ``machines`` as an iterator). The same document
    either way."""
    try:
        tty = sys.stdout.isatty()
    except (AttributeError, ValueError):  # no stdout, or a closed one
        tty = False
    if tty:
        typer.echo(json.dumps(data, indent=2, default=_lazy_list))
        return
    sys.stdout.flush()  # anything already written as text goes first
    binary = getattr(sys.stdout, "buffer", None)
    write: Callable[[bytes], Any] = (
        binary.write if binary is not None else lambda b: sys.stdout.write(b.decode("utf-8"))
    )
    pending: list[bytes] = []
    size = 0
    for chunk in _json_chunks(data, depth=2):
        pending.append(chunk)
        size += len(chunk)
        if size > 1 << 16:
            write(b"".join(pending))
            pending, size = [], 0
    pending.append(b"\n")
    write(b"".join(pending))
    (binary or sys.stdout).flush()


def _json_chunks(value: Any, depth: int) -> Iterator[bytes]:
    """``value`` as compact JSON in pieces: containers ``depth`` levels down are opened
    here, whatever lies below is encoded whole (a dict with a key that is not a string
    too)."""
    if depth and isinstance(value, dict) and value and all(type(key) is str for key in value):
        sep = b"{"
        for key, item in value.items():
            yield sep + _encode(key) + b":"
            yield from _json_chunks(item, depth - 1)
            sep = b","
        yield b"}"
    elif depth and isinstance(value, list | Iterator):  # an iterator: a lazy list
        sep = b"["
        for item in value:
            yield sep
            yield from _json_chunks(item, depth - 1)
            sep = b","
        yield b"[]" if sep == b"[" else b"]"
    else:
        yield _encode(value)


def _encode(value: Any) -> bytes:
    """orjson, or json where orjson refuses (text holding a byte that is not UTF-8, kept
    as a lone surrogate that json escapes; integers past 64 bits; keys that are not
    strings) or is not installed (the binaries' locks may leave it out)."""
    if _orjson is not None:
        try:
            return bytes(_orjson.dumps(value, default=_lazy_list))
        except TypeError:  # orjson.JSONEncodeError is one
            pass
    return json.dumps(value, separators=(",", ":"), default=_lazy_list).encode("ascii")


def _lazy_list(value: object) -> list[Any]:
    """An iterator in a document is a list built while it is written (``lazy`` views)."""
    if isinstance(value, Iterator):
        return list(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


@contextlib.contextmanager
def _output(*, best_effort: bool = False) -> Iterator[None]:
    try:
        yield
    except BrokenPipeError:
        _broken_pipe(best_effort=best_effort)


@contextlib.contextmanager
def _guard(*, best_effort: bool = False) -> Iterator[None]:
    """Every failure becomes one line on stderr and a documented exit code."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        typer.echo("quiesce: interrupted", err=True)
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    except BrokenPipeError:
        _broken_pipe(best_effort=best_effort)
    except Exception as exc:
        log.debug("failure", exc_info=True)
        _fail(exc, best_effort=best_effort)


@contextlib.contextmanager
def _stores(settings: Settings, *, first_only: bool = False) -> Iterator[list[SidekiqStore]]:
    from quiesce.adapters.redis.store import open_stores

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
@_with_params(_connection_params(top=True))
def main_options(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print version."),
    ] = False,
    **connection: Any,
) -> None:
    """Connection options go before or after the command: quiesce -r URL status."""
    _configure_logging(verbose=connection["verbose"])
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
    return _app_context(ctx).settings()


def _empty_fleet_notes(
    stores: Sequence[SidekiqStore], snapshot: FleetSnapshot, ctx: typer.Context
) -> list[str]:
    """Where Sidekiq might be when nothing is registered here (bounded lookups)."""
    from quiesce.runs.read import empty_fleet_notes

    if any(p.alive for p in snapshot.processes):
        return []
    return empty_fleet_notes(stores, default_url=_settings(ctx).default_url)


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
        # -v logs lines of their own: a live line would be cut into them.
        self.tty = sys.stderr.isatty() and not log.isEnabledFor(logging.DEBUG)
        self.last = 0.0
        self.how = f"until {until}, timeout {timeout_s:g}s" if wait else "no wait"
        self.header_shown = False
        self.drawn = False
        self.draining = until == "drained"

    def __call__(self, event: Event) -> None:
        from quiesce.model.report import Notice, Progress, Pushed
        from quiesce.text import plural

        if isinstance(event, Pushed):
            self.clear()
            typer.echo(
                f"signalled TSTP to {plural(event.targets, 'process', 'processes')} on "
                f"{plural(event.machines, 'machine')} ({self.how})"
            )
            sys.stdout.flush()
            self.header_shown = True
        elif isinstance(event, Notice):
            self.clear()
            print(safe(f"quiesce: {event.text}"), file=sys.stderr, flush=True)
        elif isinstance(event, Progress):
            text = (
                f"waiting: {event.confirmed} confirmed, {event.vanished} exited, "
                f"{event.pending} pending, {event.remaining_s:.0f}s left"
            )
            if self.draining:
                longest = "" if event.longest_s is None else f", longest {event.longest_s:.0f}s"
                text = (
                    f"draining: {event.drained} drained, {event.vanished} exited, "
                    f"{event.pending} busy or pending; {event.jobs} jobs running{longest}; "
                    f"{event.remaining_s:.0f}s left"
                )
            if self.tty:
                sys.stderr.write(f"\r\x1b[2K{text}")
                sys.stderr.flush()
                self.drawn = True
            elif event.elapsed_s - self.last >= 5.0:
                self.last = event.elapsed_s
                print(text, file=sys.stderr, flush=True)

    def clear(self) -> None:
        if self.drawn:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()
            self.drawn = False

    def close(self) -> None:
        self.clear()


@app.command()
@_connection_options
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
            help="Seconds to wait for confirmation.",
            min=0,
            max=MAX_TIMEOUT_S,
            callback=_seconds,
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
            metavar="SECONDS",
            help="The app's kill_timeout (fly.toml; Fly's default is 5): running jobs are "
            "compared with it, and the report says which would be killed mid-run.",
            min=0,
            max=MAX_TIMEOUT_S,
            callback=_seconds,
            show_default=False,
        ),
    ] = None,
    sidekiq_timeout: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            help="Sidekiq's shutdown timeout (its -t; Sidekiq's default is 25), for the advice.",
            min=0,
            max=MAX_TIMEOUT_S,
            callback=_seconds,
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
) -> None:
    """Send TSTP to every live Sidekiq process and confirm each one took it.

    The release command: replaces `rake sidekiq:quiet`. Filters narrow the targets
    (repeat one to accept any of its values; different filters must all match).
    Embedded processes are skipped (Sidekiq ignores signals there), already-quiet ones
    are left alone. A signal that expires unconsumed is pushed again while the deadline
    allows. Records the deploy under quiesce:deploy:* (14 days) and writes Sidekiq's
    deploy mark for the release label (--no-mark to skip).
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
        strategy=strategy,
        mark=mark,
        allow_newer=allow_newer,
        kill_timeout_s=kill_timeout,
        sidekiq_timeout_s=sidekiq_timeout,
    )
    if until is Until.DRAINED and not wait:
        raise _UsageFailure("--until drained waits for the jobs: it cannot be used with --no-wait")
    progress = _ProgressLine(until.value, timeout, wait)
    # A release command cut off by its timeout gets TERM: end the wait with a full report.
    signal.signal(signal.SIGTERM, _interrupt)
    with _guard(best_effort=best_effort), _stores(settings := _settings(ctx)) as stores:
        options = dataclasses.replace(options, default_url=settings.default_url)
        options = _bluegreen(options, max_connections_ratio, postgres_url)
        try:
            report = quiet_fleet(stores, options, on_event=None if json_output else progress)
        finally:
            progress.close()
    with _output(best_effort=best_effort):
        if json_output:
            _echo_json(report_json(report, best_effort))
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
@_connection_options
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
            help="Seconds between refreshes with --watch.",
            min=0,
            max=MAX_TIMEOUT_S,
            callback=_positive_seconds,
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
        exclude_hostnames=tuple(exclude_hostname or ()),
        exclude_tags=tuple(exclude_tag or ()),
        exclude_labels=tuple(exclude_label or ()),
        exclude_queues=tuple(exclude_queue or ()),
    )
    with _guard(), _stores(_settings(ctx)) as stores:
        while True:
            with no_cycle_collection():  # back on between --watch rounds
                snapshot = read_fleet(stores, allow_newer=allow_newer, jobs=jobs)
                notes = _empty_fleet_notes(stores, snapshot, ctx)
                snapshot, excluded = filter_snapshot(snapshot, excludes)
                if json_output:
                    # --jobs edits the process entries once they are built: not lazily.
                    data = status_json(snapshot, machines_only=machines, lazy=not jobs)
                    if excludes.active:
                        data["excluded_by"] = dict(excluded)
                    if jobs:
                        add_jobs_json(data, snapshot, args=show_args)
                    _echo_json(data)
                else:
                    if watch and sys.stdout.isatty():
                        typer.echo("\x1b[H\x1b[2J", nl=False)
                    typer.echo(status_text(snapshot, machines_only=machines))
                    if excluded:
                        typer.echo(excluded_text(excluded))
                    if jobs:
                        typer.echo("\n".join(jobs_text(snapshot, args=show_args)))
                    for note in notes:
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
EXPORTER_LISTEN = "0.0.0.0:10437"
"""``quiesce exporter``'s default address (``quiesce.adapters.prometheus.DEFAULT_PORT``)."""


@app.command()
@_connection_options
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
            help="Seconds between beats. Default: the version's (5 or 10).",
            show_default=False,
            min=0,
            max=MAX_TIMEOUT_S,
            callback=_positive_seconds,
        ),
    ] = None,
    duration: Annotated[
        float,
        typer.Option(
            help="Stop after this many seconds (0: Ctrl-C).",
            min=0,
            max=MAX_TIMEOUT_S,
            callback=_seconds,
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
    from quiesce.adapters.redis.store import connect
    from quiesce.runs.read import read_fleet
    from quiesce.sim.simulator import SimulatedFleet, make_processes
    from quiesce.text import plural

    with _guard(), _stores(settings := _settings(ctx), first_only=True) as stores:
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
    """``20m``, ``90s``, ``1h30m`` or plain seconds."""
    import re

    text = value.strip().lower()
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", text)
    if not text or parts is None or not any(parts.groups()):
        raise ConfigError(f"{value!r} is not a duration (e.g. 20m, 90s, 1h30m)")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in parts.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0 or total > MAX_TIMEOUT_S:
        raise ConfigError(f"{value!r} must be above 0 and at most {MAX_TIMEOUT_S:g}s")
    return total


@contextlib.contextmanager
def _fly_client(app_name: str | None, *, use: bool = True) -> Iterator[tuple[Any, str | None]]:
    """The Fly client when the token and app are known, else ``(None, why not)``."""
    if not use:
        yield None, "--no-fly"
        return
    from quiesce.adapters.fly import FlyClient, FlyConfig

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


_APP_HELP = "Fly app whose Machines to list. Default: $FLY_APP_NAME. Token: $FLY_API_TOKEN."


class _RejoinProgress:
    """A bar on a terminal, else a plain line when the counts change or every 30 s."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty() and not log.isEnabledFor(logging.DEBUG)
        self.last_line = ""
        self.last_at = -math.inf
        self.drawn = False

    def __call__(self, report: Any, remaining_s: float) -> None:
        from quiesce.views.rejoin import counts_line, progress_line

        if self.tty:
            sys.stderr.write(f"\r\x1b[2K{progress_line(report, remaining_s)}")
            sys.stderr.flush()
            self.drawn = True
            return
        line = counts_line(report)
        now = time.monotonic()
        if line != self.last_line or now - self.last_at >= 30.0:
            self.last_line, self.last_at = line, now
            print(safe(f"rejoin: {line}; {remaining_s:.0f}s left"), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()


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
@_connection_options
def rejoin(
    ctx: typer.Context,
    wait: Annotated[
        bool, typer.Option("--wait", help="Poll until the fleet is whole or --timeout passes.")
    ] = False,
    timeout: Annotated[
        str,
        typer.Option(
            metavar="DURATION",
            help="How long --wait waits (20m, 90s, 1h). Without --wait: Machines still not "
            "back this long after the quiet are reported missing.",
        ),
    ] = "20m",
    interval: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            help="Seconds between polls with --wait (the Fly list: at most every 5 s).",
            min=0,
            max=MAX_TIMEOUT_S,
            callback=_positive_seconds,
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
) -> None:
    """Say which Machines came back after the deploy: exit 0 only when the fleet is whole.

    Judges the latest deploy record (written by `quiesce quiet`) against the live
    heartbeats and, with FLY_API_TOKEN and an app, Fly's Machine list: per Machine
    rejoined, partial, draining, quiet-idle, old-running, pending, missing, gone,
    not-expected (stopped) or new; per group "N of N back"; how long each Machine took
    no jobs. Reads only. Exit 7 when not whole (at the --timeout deadline with --wait).
    """
    from quiesce.model.rejoin import RejoinFilters
    from quiesce.runs.rejoin import RejoinOptions, RejoinWatch
    from quiesce.views.rejoin import rejoin_json, rejoin_text

    with _guard():
        timeout_s = _duration(timeout)
        progress = _RejoinProgress()
        with (
            _stores(_settings(ctx)) as stores,
            _fly_client(app_name, use=fly) as (client, why),
        ):
            options = RejoinOptions(
                filters=RejoinFilters(tags=tuple(tag or ()), hostnames=tuple(hostname or ())),
                release=release,
                process_group=process_group,
                allow_newer=allow_newer,
                timeout_s=timeout_s,
                interval_s=interval,
                fly_note=why if fly else None,
            )
            watch = RejoinWatch(stores, client, options)
            signal.signal(signal.SIGTERM, _interrupt)
            try:
                report = watch.wait(None if json_output else progress) if wait else watch.poll(None)
            finally:
                progress.close()
    with _output():
        if json_output:
            _echo_json(rejoin_json(report))
        else:
            typer.echo(rejoin_text(report, show_all=show_all))
    raise typer.Exit(0 if report.whole else int(ExitCode.NOT_WHOLE))


@app.command()
@_connection_options
def recover(
    ctx: typer.Context,
    after: Annotated[
        str,
        typer.Option(
            metavar="DURATION", help="Only processes quiet for longer than this (5m, 90s)."
        ),
    ] = "5m",
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
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Replace processes a failed deploy left quiet (Sidekiq cannot un-quiet them).

    Finds Machines whose every live process was quieted by the latest deploy longer than
    --after ago, with no new process. Prints what it would do; with --yes, --restart
    restarts each through the Fly API (one a second, one line per Machine, going on past
    failures) or --stop sends TERM so the supervisor starts a new process. Never touches
    a Machine that still runs a non-quiet process.
    """
    from quiesce.model.recover import RecoverReport, stranded
    from quiesce.model.rejoin import RejoinFilters
    from quiesce.runs.read import read_fleet
    from quiesce.runs.recover import restart_all, stop_all
    from quiesce.views.rejoin import recover_json, recover_text

    with _guard():
        if restart and stop:
            raise ConfigError("choose one of --restart and --stop")
        if yes and not (restart or stop):
            raise ConfigError("--yes needs --restart or --stop")
        after_s = _duration(after)
        action = "restart" if restart else "stop" if stop else "none"
        with _stores(_settings(ctx)) as stores:
            snapshot = read_fleet(stores)
            filters = RejoinFilters(tags=tuple(tag or ()), hostnames=tuple(hostname or ()))
            candidates, notes = stranded(
                snapshot, snapshot.latest_deploy, after_s=after_s, filters=filters
            )
            results: dict[str, str] = {}
            if yes and candidates and restart:
                with _fly_client(app_name) as (client, why):
                    if client is None:
                        raise ConfigError(f"--restart needs the Fly API: {why}")
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
    with _output():
        if json_output:
            _echo_json(recover_json(report))
        else:
            typer.echo(recover_text(report))
    raise typer.Exit(0 if report.ok else int(ExitCode.FLY_API))


@app.command()
@_connection_options
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
    from quiesce.adapters.prometheus import ExporterServer, QuiesceCollector, parse_listen, serve

    with _guard(), _stores(settings := _settings(ctx)) as stores:
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
@_connection_options
def doctor(
    ctx: typer.Context,
    fly_toml: Annotated[
        str, typer.Argument(metavar="FLY_TOML", help="The app's fly.toml.")
    ] = "fly.toml",
    sidekiq_timeout: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            help="Sidekiq's shutdown timeout (-t). Default: -t in the worker's [processes] "
            "command, else 25.",
            show_default=False,
            min=0,
            max=MAX_TIMEOUT_S,
            callback=_positive_seconds,
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

    with _guard():
        try:
            with open(fly_toml, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError as exc:
            raise ConfigError(f"cannot read {fly_toml}: {exc.strerror or exc}") from exc
        config = dr.parse_fly_toml(text, name=fly_toml)
        deploy = dr.read_deploy(config, sidekiq_timeout_s=sidekiq_timeout, groups=group or ())
        findings = dr.check_config(deploy, config)
        settings = _settings(ctx)
        fleet_checked = settings.default_url is None
        if fleet_checked:
            findings += _doctor_fleet(settings, deploy, tuple(release or ()))
    errors = sum(f.level is dr.Level.ERROR for f in findings)
    with _output():
        if json_output:
            doc = {
                "file": fly_toml,
                "fleet_checked": fleet_checked,
                "errors": errors,
                "warnings": len(findings) - errors,
                "findings": [f.as_json() for f in findings],
            }
            _echo_json(doc)
        else:
            for finding in findings:
                typer.echo(safe(finding.line))
            if not fleet_checked:
                typer.echo("note: no Redis given (-r URL or REDIS_URL): checked fly.toml only")
            typer.echo(dr.summary(findings))
    if errors:
        raise typer.Exit(int(ExitCode.NOT_CONFIRMED))


def _doctor_fleet(settings: Settings, deploy: Deploy, releases: tuple[str, ...]) -> list[Finding]:
    """The live half of doctor: one fleet snapshot, then one round trip per server for the
    busy jobs of its live processes. Reads only."""
    from quiesce.model import doctor as dr
    from quiesce.runs.read import read_fleet

    with _stores(settings) as stores:
        snapshot = read_fleet(stores, allow_newer=True)
        live = [p for p in snapshot.processes if p.alive and p.problem is None]
        busy = []
        for store in stores:
            mine = {p.identity: p for p in live if p.redis == store.label}
            for identity, raw in store.busy_work(list(mine)):
                job = dr.parse_busy(identity, mine[identity].hostname, raw)
                if job is not None:
                    busy.append(job)
    return dr.check_fleet(deploy, snapshot, busy, releases=releases)


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
            metavar="SECONDS",
            help="Seconds between simulated heartbeats (Sidekiq 7+: 10).",
            min=0,
            max=60,
            callback=_positive_seconds,
        ),
    ] = 1.0,
    rejoin_timeout: Annotated[
        str,
        typer.Option(metavar="DURATION", help="How long the rejoin tracking waits (15s, 1m)."),
    ] = "15s",
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
    from quiesce.sim.demo import DemoOptions, run_demo

    with _guard():
        if fail_machine is not None and fail_machine > machines:
            raise ConfigError(f"--fail-machine {fail_machine}: there are {machines} Machines")
        options = DemoOptions(
            machines=machines,
            sidekiq_version=sidekiq_version,
            strategy=strategy.value,
            fail_machine=fail_machine,
            beat_interval_s=beat_interval,
            rejoin_timeout_s=_duration(rejoin_timeout),
            metrics_port=metrics_port,
            redis=embedded.value,
            seed=seed,
        )
        # The release command's own progress line, as `quiesce quiet` prints it.
        progress = _ProgressLine("delivered", 30.0, True)
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


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> None:
    app(args=list(argv) if argv is not None else None, prog_name="quiesce")
