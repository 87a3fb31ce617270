"""Options every command shares, declared once: the connection options (accepted before
and after the command; after it, they win, as kubectl and flyctl allow) and -v.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import logging
import math
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from quiesce.model.filters import Filters
from quiesce.settings import MAX_TIMEOUT_S, Settings, Tls, build_settings
from quiesce.text import safe

F = TypeVar("F", bound=Callable[..., None])


class Strategy(enum.StrEnum):
    """flyctl's deploy strategies (docs/fly.md: anything else silently deploys rolling)."""

    IMMEDIATE = "immediate"
    BLUEGREEN = "bluegreen"
    CANARY = "canary"
    ROLLING = "rolling"


def duration_value(value: object, *, zero_ok: bool, most: float = MAX_TIMEOUT_S) -> float:
    """The one parser of every duration option: ``text.parse_duration`` (``90``, ``90s``,
    ``5m``, ``1h30m``, ``500ms``), then the bounds. Typer also passes the default through
    here, as a number."""
    from quiesce.text import parse_duration

    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        try:
            seconds = parse_duration(str(value))
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    if not math.isfinite(seconds) or seconds > most:
        raise typer.BadParameter(f"{value} is more than the {most:g}s quiesce accepts")
    if seconds == 0 and not zero_ok:
        raise typer.BadParameter(f"{value} must be above 0")
    return seconds


def any_duration(value: object) -> float:
    return duration_value(value, zero_ok=True)


def positive_duration(value: object) -> float:
    return duration_value(value, zero_ok=False)


def beat_duration(value: object) -> float:
    # A heartbeat hash lives 60 s: a longer simulated interval would expire between beats.
    return duration_value(value, zero_ok=False, most=60.0)


class SafeFormatter(logging.Formatter):
    """-v logs quote identities and Redis replies: escaped like every other output."""

    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(safe(line) for line in super().format(record).splitlines())


def configure_logging(*, verbose: bool) -> None:
    root = logging.getLogger()
    if not any(isinstance(h.formatter, SafeFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(SafeFormatter("quiesce: %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)


# -- connection options, accepted before and after the command ----------------------------

URL_HELP = (
    "Sidekiq's Redis (redis://, rediss://, unix://). Repeat it, or separate URLs "
    "with commas, when Sidekiq is sharded over several servers. Default: $REDIS_URL "
    "(or the variable $REDIS_PROVIDER names), else redis://127.0.0.1:6379/0."
)
NAMESPACE_HELP = "redis-namespace prefix (Sidekiq <= 6 only): keys get '<namespace>:'."
SKIP_VERIFY_HELP = (
    "Do NOT verify the Redis server's TLS certificate or hostname (anyone on the path can "
    "then pose as Redis). Prefer --tls-ca-cert with the server's CA. Warns on every run."
)


def connection_params(*, top: bool) -> list[inspect.Parameter]:
    """The same options on the app and on every command. Environment variables are read
    once, by the app's copy: a command's copy is unset unless typed after the command."""

    def env(name: str) -> str | None:
        return name if top else None

    def seconds(name: str, help: str, default: float) -> tuple[str, object, object]:
        option = typer.Option(
            help=help,
            metavar="DURATION",
            parser=positive_duration,
            show_default=top,
        )
        return name, Annotated[float | None, option], default if top else None

    default_str = "" if top else None
    options: list[tuple[str, object, object]] = [
        (
            "redis_url",
            Annotated[
                list[str] | None,
                typer.Option("--redis-url", "-r", metavar="URL", help=URL_HELP, show_default=False),
            ],
            None,
        ),
        (
            "namespace",
            Annotated[
                str | None,
                typer.Option(
                    envvar=env("QUIESCE_NAMESPACE"), metavar="PREFIX", help=NAMESPACE_HELP
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
                    "--tls-skip-verify", envvar=env("REDIS_TLS_SKIP_VERIFY"), help=SKIP_VERIFY_HELP
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
        seconds("connect_timeout", "How long to wait for a Redis connection (3, 3s).", 3.0),
        seconds("read_timeout", "How long to wait for a Redis reply (5, 5s, 500ms).", 5.0),
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


CONNECTION_OPTIONS = tuple(p.name for p in connection_params(top=False))


def with_params(
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


def connection_options(fn: Callable[..., None]) -> Callable[..., None]:
    """A command that also takes the connection options: values typed after the command
    win over those before it (``quiesce status -r URL``, as kubectl and flyctl allow)."""

    @functools.wraps(fn)
    def command(**kwargs: Any) -> None:
        given = {name: kwargs.pop(name) for name in CONNECTION_OPTIONS}
        ctx = kwargs["ctx"]
        ctx.obj = app_context(ctx).override(**given)
        if given["verbose"]:
            configure_logging(verbose=True)
        fn(**kwargs)

    return with_params(connection_params(top=False), like=fn)(command)


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


def app_context(ctx: typer.Context) -> AppContext:
    obj = ctx.obj
    assert isinstance(obj, AppContext)
    return obj


# -- options several commands take, declared once (same flag, same help everywhere) ------

Hostnames = Annotated[
    list[str] | None,
    typer.Option(
        "--hostname", metavar="GLOB", help="Only hostnames (Fly Machine ids) matching this glob."
    ),
]
Tags = Annotated[
    list[str] | None, typer.Option("--tag", metavar="TAG", help="Only processes with this tag.")
]
Labels = Annotated[
    list[str] | None,
    typer.Option("--label", metavar="LABEL", help="Only processes with this label."),
]
Queues = Annotated[
    list[str] | None,
    typer.Option("--queue", metavar="QUEUE", help="Only processes that listen on this queue."),
]
Identities = Annotated[
    list[str] | None,
    typer.Option("--identity", metavar="IDENTITY", help="Only this process identity."),
]
ExcludeHostnames = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude-hostname",
        metavar="GLOB",
        help="Leave out hostnames (Fly Machine ids) matching this glob.",
    ),
]
ExcludeTags = Annotated[
    list[str] | None,
    typer.Option("--exclude-tag", metavar="TAG", help="Leave out processes with this tag."),
]
ExcludeLabels = Annotated[
    list[str] | None,
    typer.Option("--exclude-label", metavar="LABEL", help="Leave out processes with this label."),
]
ExcludeQueues = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude-queue", metavar="QUEUE", help="Leave out processes that listen on this queue."
    ),
]
JsonOutput = Annotated[
    bool, typer.Option("--json", help="Print JSON (its fields: docs/reference.md).")
]
AppName = Annotated[
    str | None,
    typer.Option(
        "--app",
        metavar="NAME",
        help="The Fly app: the scope of its deploy history, and whose Machines the Fly API "
        "lists (with $FLY_API_TOKEN). Default: $FLY_APP_NAME.",
        show_default=False,
    ),
]
"""Filters repeat (any of several values); different filters must all match: a process
is selected when it passes every inclusion and no exclusion (``model.filters.Filters``)."""


def filters_of(
    *,
    hostname: list[str] | None = None,
    tag: list[str] | None = None,
    label: list[str] | None = None,
    queue: list[str] | None = None,
    identity: list[str] | None = None,
    exclude_hostname: list[str] | None = None,
    exclude_tag: list[str] | None = None,
    exclude_label: list[str] | None = None,
    exclude_queue: list[str] | None = None,
) -> Filters:
    """The one ``Filters`` from the filter options a command takes."""
    return Filters(
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
