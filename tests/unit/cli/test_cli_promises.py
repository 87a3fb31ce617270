"""The CLI keeps its promises (issue 16): one duration parser for every duration option,
--strategy an enum, filters in both directions."""

from __future__ import annotations

import pytest

from tests.support.cli import one_line_error, run

NO_REDIS = "redis://127.0.0.1:1/0"


@pytest.mark.parametrize(
    "args",
    [
        ("quiet", "--timeout", "60s"),
        ("quiet", "--timeout", "1m30s", "--kill-timeout", "30s", "--sidekiq-timeout", "25"),
        ("rejoin", "--timeout", "20m", "--no-fly"),
        ("recover", "--after", "90s"),
        ("status", "--read-timeout", "500ms"),
    ],
)
def test_every_duration_option_takes_the_documented_forms(args: tuple[str, ...]) -> None:
    code, _, err = run(*args, "-r", NO_REDIS)
    # Parsed: the run reaches Redis (refused on port 1), not a usage error.
    assert code != 2 or "cannot connect" in err, err
    assert "Invalid value" not in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("quiet", "--timeout", "nan"), "'nan' is not a duration"),
        (("quiet", "--timeout", "-5"), "is not a duration"),
        (("quiet", "--timeout", "90000"), "more than the 86400s"),
        (("rejoin", "--timeout", "0"), "must be above 0"),
        (("quiet", "--strategy", "bluegren"), "'bluegren' is not one of"),
    ],
)
def test_bad_values_are_one_line_usage_errors(args: tuple[str, ...], needle: str) -> None:
    code, _, err = run(*args, "-r", NO_REDIS)
    assert code == 2
    assert needle in one_line_error(err)


def test_duration_options_show_the_duration_metavar() -> None:
    for command in ("quiet", "rejoin", "recover", "status", "doctor"):
        _, out, _ = run(command, "--help")
        assert "float range" not in out and "<float" not in out, (command, out)
    _, out, _ = run("quiet", "--help")
    assert "--timeout DURATION" in out and "--kill-timeout DURATION" in out


def test_strategy_lists_flys_four() -> None:
    _, out, _ = run("quiet", "--help")
    assert "immediate|bluegreen|canary|rolling" in out
