"""The ``quiesce`` command line: parse, call one service function, render, exit.

Start-up matters (the release command runs on every deploy), so redis-py and the
adapters are imported inside the commands, not at module import.
"""

from __future__ import annotations

from collections.abc import Sequence

from quiesce.cli.base import app

# Each command module registers its commands when imported, in --help's order: the
# release command first, then what follows a deploy.
# isort: off
from quiesce.cli import quiet  # noqa: F401
from quiesce.cli import status  # noqa: F401
from quiesce.cli import rejoin  # noqa: F401
from quiesce.cli import exporter  # noqa: F401
from quiesce.cli import doctor  # noqa: F401
from quiesce.cli import demo  # noqa: F401
# isort: on


def main(argv: Sequence[str] | None = None) -> None:
    app(args=list(argv) if argv is not None else None, prog_name="quiesce")


__all__ = ["app", "main"]
