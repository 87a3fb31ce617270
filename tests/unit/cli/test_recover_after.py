"""``recover --after`` goes through the one duration parser (``text.parse_duration``)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from quiesce.cli.app import app
from quiesce.errors import ExitCode


@pytest.mark.parametrize("after", ["5 m", "nan", "-5", "0", "2d", "90000s"])
def test_a_bad_after_is_a_one_line_usage_error_before_redis_is_touched(after: str) -> None:
    # Port 9 (discard) would refuse: the option must fail first, with exit 2.
    result = CliRunner().invoke(
        app, ["--redis-url", "redis://127.0.0.1:9", "recover", "--after", after]
    )
    assert result.exit_code == ExitCode.USAGE, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--after" in lines[0] and "Traceback" not in result.stderr
