"""rejoin/recover filters work in both directions (issue 16)."""

from __future__ import annotations

from quiesce.model.rejoin import RejoinFilters


def test_exclusions_leave_out_what_inclusions_would_take() -> None:
    f = RejoinFilters(hostnames=("web-*",), exclude_hostnames=("web-2*",), exclude_tags=("other",))
    assert f.matches("web-1a", "app")
    assert not f.matches("web-2a", "app")
    assert not f.matches("web-1a", "other")
    assert not f.matches("worker-1", "app")
    assert RejoinFilters().matches("anything", "")


def test_recover_still_restarts_a_machine_whose_quiet_process_stopped_beating() -> None:
    from quiesce.model.fleet import ProcessRecord, SidekiqVersion
    from quiesce.model.recover import _left_quiet

    version = SidekiqVersion("7.3.10", False, 10.0)
    hung = ProcessRecord("m:1:a", "m", 1, True, version=version, quiet=True, beat_age_s=40.0)
    running = ProcessRecord("m:2:b", "m", 2, True, version=version, beat_age_s=40.0)
    assert _left_quiet(hung)  # stalled in status, but left quiet: a restart is the cure
    assert not _left_quiet(running)
