"""How the command line fails on bad usage: one line and exit 2, like every other failure.

Click prints a usage error as a usage block, a hint and the message; quiesce's callers
(deploy logs, CI) get the message alone.
"""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import Iterator
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

from quiesce.errors import ExitCode
from quiesce.text import safe


def _click_class(name: str) -> type[Exception]:
    """typer vendors click and re-exports only ``BadParameter`` of its usage errors: the
    base classes are found in that public class's ancestry (a rename fails at import, in
    the tests, not at a user's prompt)."""
    for cls in typer.BadParameter.__mro__:
        if cls.__name__ == name and issubclass(cls, Exception):
            return cls
    raise ImportError(f"typer.BadParameter no longer derives from click's {name}")


UsageError = _click_class("UsageError")
"""click's usage error (a bad option, value or command), as typer raises it."""


def exit_codes_help() -> str:
    codes = sorted(ExitCode, key=lambda c: (c is ExitCode.INTERNAL, c.value))
    # \b: click keeps the block's line breaks instead of rewrapping it.
    lines = (
        textwrap.fill(
            c.description, 78, initial_indent=f"  {c.value:>3}  ", subsequent_indent=" " * 7
        )
        for c in codes
    )
    return "\b\nExit status:\n" + "\n".join(lines)


def is_help_request(exc: BaseException) -> bool:
    return type(exc).__name__ == "NoArgsIsHelpError"


def usage_error(message: str) -> NoReturn:
    typer.echo(f"quiesce: error: {safe(message)}", err=True)
    raise typer.Exit(int(ExitCode.USAGE))


@contextlib.contextmanager
def one_line_usage() -> Iterator[None]:
    try:
        yield
    except UsageError as exc:
        if is_help_request(exc):  # `quiesce` alone prints the help
            raise
        usage_error(exc.format_message())  # type: ignore[attr-defined]


class Group(TyperGroup):
    """The app's command group: usage errors as one line."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with one_line_usage():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with one_line_usage():
            return super().invoke(ctx)
