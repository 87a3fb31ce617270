"""Running the CLI in-process for tests: exit code, stdout and stderr apart."""

from __future__ import annotations

from typer.testing import CliRunner

from quiesce.cli.app import app

runner = CliRunner()


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def one_line_error(stderr: str) -> str:
    """The single ``quiesce: error: ...`` line of ``stderr`` (fails on anything else)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("quiesce: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]
