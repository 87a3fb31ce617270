"""``quiesce exporter``: Prometheus metrics about the fleet, its queues and its deploys."""

from __future__ import annotations

import signal
from typing import Annotated

import typer

from quiesce.cli.base import _LEFT_OUT, _left_out, _root, _scope, _settings, app
from quiesce.cli.guard import guard, open_stores
from quiesce.cli.options import (
    AppName,
    connection_options,
)
from quiesce.errors import ConfigError
from quiesce.settings import EXPORTER_PORT
from quiesce.text import safe

EXPORTER_LISTEN = f"0.0.0.0:{EXPORTER_PORT}"
"""``quiesce exporter``'s default address (``quiesce.adapters.prometheus.DEFAULT_PORT``)."""


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
    app_name: AppName = None,
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
            stores[0],
            postgres=reader,
            per_machine=per_machine,
            allow_newer=allow_newer,
            scope=_scope(settings, app_name, None),
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
