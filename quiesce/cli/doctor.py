"""``quiesce doctor``, and ``refusal``: the release command checked by the parser that
will run it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Annotated

import typer

from quiesce.cli.base import _settings, app
from quiesce.cli.guard import guard, open_stores, output
from quiesce.cli.json_output import echo_json
from quiesce.cli.options import (
    JsonOutput,
    connection_options,
    positive_duration,
)
from quiesce.cli.usage import Group, UsageError, is_help_request
from quiesce.errors import ExitCode
from quiesce.text import safe


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
    json_output: JsonOutput = False,
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
