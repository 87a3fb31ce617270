"""Every failure becomes one line on stderr and a documented exit code; a closed pipe is a
quiet stop; Redis connections are closed whatever happens."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, NoReturn

import typer

from quiesce.errors import ExitCode, QuiesceError
from quiesce.settings import Settings
from quiesce.text import safe

if TYPE_CHECKING:
    from quiesce.adapters.redis.store import SidekiqStore

log = logging.getLogger("quiesce")


def fail(exc: BaseException, *, best_effort: bool = False) -> NoReturn:
    if isinstance(exc, QuiesceError):
        code, kind = exc.exit_code, "error"
    else:
        code, kind = ExitCode.INTERNAL, f"internal error ({type(exc).__name__})"
    typer.echo(safe(f"quiesce: {kind}: {exc}"), err=True)
    if best_effort:
        typer.echo("quiesce: --best-effort: exiting 0 anyway", err=True)
        raise typer.Exit(0)
    raise typer.Exit(int(code))


def broken_pipe(*, best_effort: bool = False) -> NoReturn:
    """The reader went away (``quiesce status | head -1``): stop without a word, with the
    status a Unix tool killed by SIGPIPE has. Python would fail again flushing stdout at
    exit, so stdout now points at /dev/null."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise typer.Exit(0 if best_effort else int(ExitCode.BROKEN_PIPE))


@contextlib.contextmanager
def output(*, best_effort: bool = False) -> Iterator[None]:
    try:
        yield
    except BrokenPipeError:
        broken_pipe(best_effort=best_effort)


@contextlib.contextmanager
def guard(*, best_effort: bool = False) -> Iterator[None]:
    """Every failure becomes one line on stderr and a documented exit code."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        typer.echo("quiesce: interrupted", err=True)
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    except BrokenPipeError:
        broken_pipe(best_effort=best_effort)
    except Exception as exc:
        log.debug("failure", exc_info=True)
        fail(exc, best_effort=best_effort)


@contextlib.contextmanager
def open_stores(settings: Settings, *, first_only: bool = False) -> Iterator[list[SidekiqStore]]:
    from quiesce.adapters.redis.store import open_stores as open_all

    if first_only:
        settings = dataclasses.replace(settings, redis=settings.redis[:1])
    stores = open_all(settings)
    try:
        yield stores
    finally:
        for store in stores:
            store.close()
