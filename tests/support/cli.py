"""Running the CLI in-process, and what every failure must look like."""

from __future__ import annotations

from typer.testing import CliRunner

from quiesce.cli.app import app

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    """``quiesce ARGS``: exit code, stdout, stderr."""
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def assert_one_line_error(stderr: str, *needles: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("quiesce: error: "), stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
