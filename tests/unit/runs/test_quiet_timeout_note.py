"""The short-timeout warning states the heartbeat interval it assumes, and its basis
(issue 16: a 6.4.1 fleet beats every 5 s, not 10)."""

from __future__ import annotations

from quiesce.model.fleet import ProcessRecord, SidekiqVersion
from quiesce.model.report import QuietOptions
from quiesce.model.verdict import Until
from quiesce.runs.confirm import QuietRun
from quiesce.runs.quiet import _warn_short_timeout

INFERRED_6X = SidekiqVersion("6.2-7.0.1", True, 10.0, beat_interval_min_s=5.0)


def notes(timeout_s: float, version: SidekiqVersion, until: Until = Until.QUIET) -> list[str]:
    options = QuietOptions(until=until, timeout_s=timeout_s)
    run = QuietRun([], options, clock=lambda: 0.0, sleep=lambda s: None, on_event=None)
    _warn_short_timeout(run, [ProcessRecord("m:1:abc", "m", 1, True, version=version)])
    return run.notes


def test_an_inferred_6x_range_warns_only_below_its_shorter_interval() -> None:
    assert notes(12, INFERRED_6X) == []  # fits two 5 s beats: 6.4.1 confirms in time
    (note,) = notes(8, INFERRED_6X)
    assert "--timeout 8s is shorter than two heartbeats" in note
    assert "10s if they run 6.x, which beats every 5 s" in note
    assert "20s if 7.0.0/7.0.1" in note and "writes no version" in note


def test_a_known_version_names_its_interval() -> None:
    (note,) = notes(15, SidekiqVersion("7.3.10", False, 10.0))
    assert "(20s: Sidekiq 7.3.10 beats every 10 s)" in note
    assert notes(6, SidekiqVersion("7.3.10", False, 10.0), Until.DELIVERED) != []
    assert notes(11, SidekiqVersion("7.3.10", False, 10.0), Until.DELIVERED) == []
