"""Running the CLI in-process, what every failure must look like, and what a run left
behind in Redis."""

from __future__ import annotations

import redis
from typer.testing import CliRunner

from quiesce.cli.app import app

runner = CliRunner()


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``quiesce ARGS``: (exit code, stdout, stderr); ``env`` adds variables."""
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def one_line_error(stderr: str) -> str:
    """The single ``quiesce: error: ...`` line of ``stderr`` (fails on anything else)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("quiesce: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def assert_one_line_error(stderr: str, *needles: str) -> None:
    line = one_line_error(stderr)
    for needle in needles:
        assert needle in line, line


def written(client: redis.Redis) -> list[str]:
    """Every key a quiet may write (its records, signals, marks), of every database."""
    found = []
    for db in range(16):
        client.execute_command("SELECT", db)  # type: ignore[no-untyped-call]
        for key in client.scan_iter(match="*"):
            text = key.decode() if isinstance(key, bytes) else str(key)
            if "quiesce:" in text or text.endswith(("-signals", "-marks")):
                found.append(f"db{db}:{text}")
    client.execute_command("SELECT", 0)  # type: ignore[no-untyped-call]
    return sorted(found)
