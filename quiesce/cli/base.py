"""The typer app, its app-wide options, and what the commands share: settings from the
context, the deploy scope, the Fly client, notes about where Sidekiq might be."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from quiesce import __version__
from quiesce.cli.options import (
    AppContext,
    app_context,
    configure_logging,
    connection_params,
    positive_duration,
    with_params,
)
from quiesce.cli.usage import Group, exit_codes_help
from quiesce.errors import ConfigError
from quiesce.model.filters import Filters
from quiesce.settings import Settings, Tls

if TYPE_CHECKING:
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


def _release_label(explicit: str | None) -> str | None:
    for value in (explicit, os.environ.get("RELEASE_LABEL"), os.environ.get("FLY_IMAGE_REF")):
        if value and value.strip():
            return value.strip()
    return None


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
    try:
        from quiesce.adapters.fly import FlyConfig
    except ModuleNotFoundError as exc:
        if _root(exc.name) not in _LEFT_OUT:
            raise
        yield None, "this build carries no Fly API client (httpx): Fly's view not recorded"
        return
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
