"""Running the CLI in-process, and what a run left behind in Redis."""

from __future__ import annotations

import redis
from typer.testing import CliRunner

from quiesce.cli.app import app

_runner = CliRunner()


def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``quiesce <args>``: (exit code, stdout, stderr); ``env`` adds variables."""
    result = _runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def written(client: redis.Redis) -> list[str]:
    """Every key a quiet may write (its records, signals, marks), of every database."""
    found = []
    for db in range(16):
        client.execute_command("SELECT", db)
        for key in client.scan_iter(match="*"):
            text = key.decode() if isinstance(key, bytes) else str(key)
            if "quiesce:" in text or text.endswith(("-signals", "-marks")):
                found.append(f"db{db}:{text}")
    client.execute_command("SELECT", 0)
    return sorted(found)
