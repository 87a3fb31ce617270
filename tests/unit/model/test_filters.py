"""The one filter type: both directions on every command, the same answer for a live
process and for what a deploy record kept of it, and one count of what was left out."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from quiesce.model.filters import Filters
from quiesce.model.fleet import ProcessRecord, SidekiqVersion
from quiesce.model.recover import _left_quiet

VERSION = SidekiqVersion("7.3.10", False, 10.0)


def proc(host: str, tag: str = "app", labels: tuple[str, ...] = ()) -> ProcessRecord:
    return ProcessRecord(f"{host}:1:a", host, 1, True, version=VERSION, tag=tag, labels=labels)


def test_exclusions_leave_out_what_inclusions_would_take() -> None:
    f = Filters(hostnames=("web-*",), exclude_hostnames=("web-2*",), exclude_tags=("other",))
    assert f.admits("web-1a", "app")
    assert not f.admits("web-2a", "app")
    assert not f.admits("web-1a", "other")
    assert not f.admits("worker-1", "app")
    assert Filters().admits("anything", "")


def test_split_counts_each_filter_once() -> None:
    f = Filters(exclude_hostnames=("b*",), exclude_tags=("other",))
    kept, by = f.split([proc("a1"), proc("b1"), proc("b2"), proc("a2", tag="other")])
    assert [p.hostname for p in kept] == ["a1"]
    assert by == (("--exclude-hostname b*", 2), ("--exclude-tag other", 1))


names = st.sampled_from(["web-1", "web-2", "worker-1", "m"])
tags = st.sampled_from(["", "app", "other"])
label_sets = st.lists(st.sampled_from(["release:a", "release:b", "x"]), max_size=2)


@given(
    host=names,
    tag=tags,
    labels=label_sets,
    hostnames=st.lists(st.sampled_from(["web-*", "m", "w*"]), max_size=2),
    want_tags=st.lists(tags, max_size=2),
    want_labels=st.lists(st.sampled_from(["release:a", "x"]), max_size=1),
    ex_hosts=st.lists(st.sampled_from(["web-2", "worker-*"]), max_size=1),
    ex_tags=st.lists(tags, max_size=1),
)
def test_a_record_entry_is_judged_like_the_live_process(
    host: str,
    tag: str,
    labels: list[str],
    hostnames: list[str],
    want_tags: list[str],
    want_labels: list[str],
    ex_hosts: list[str],
    ex_tags: list[str],
) -> None:
    f = Filters(
        hostnames=tuple(hostnames),
        tags=tuple(want_tags),
        labels=tuple(want_labels),
        exclude_hostnames=tuple(ex_hosts),
        exclude_tags=tuple(ex_tags),
    )
    live = proc(host, tag, tuple(labels))
    assert f.selects(live) == f.admits(host, tag, labels)


def test_a_quiet_process_that_stopped_beating_is_left_quiet_not_working() -> None:
    hung = ProcessRecord("m:1:a", "m", 1, True, version=VERSION, quiet=True, beat_age_s=40.0)
    running = ProcessRecord("m:2:b", "m", 2, True, version=VERSION, beat_age_s=40.0)
    # Stalled in status; recover calls it "stopped beating" (not restarted, not "working").
    assert _left_quiet(hung)
    assert not _left_quiet(running)
