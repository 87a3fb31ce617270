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
