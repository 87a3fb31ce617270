"""The pure core: planning, confirmation verdicts, deploy stamps, settings."""

from __future__ import annotations

import dataclasses

import pytest

from quiesce.errors import ConfigError
from quiesce.model.filters import Filters
from quiesce.model.fleet import ProcessRecord, SidekiqVersion
from quiesce.model.quiet import Outcome, plan_quiet
from quiesce.model.record import (
    DeployRecord,
    DeployState,
    mark_stamp,
    new_deploy_id,
    parse_deploy_record,
    quiet_since,
)
from quiesce.model.record_entries import OutcomeEntry
from quiesce.model.snapshot import FleetSnapshot
from quiesce.model.verdict import (
    Target,
    Until,
    Verdict,
    assess,
    finalize,
    pushed,
    server_lost_data,
)
from quiesce.settings import build_settings, mask_url
from quiesce.sidekiq.rows import PollRow

V7 = SidekiqVersion("7.3.10", inferred=False, beat_interval_s=10.0)


def proc(identity: str, **kw: object) -> ProcessRecord:
    host, pid, _ = identity.rsplit(":", 2)
    base = ProcessRecord(identity=identity, hostname=host, pid=int(pid), alive=True, version=V7)
    return dataclasses.replace(base, **{"beat_age_s": 1.0, **kw})  # type: ignore[arg-type]


FLEET = FleetSnapshot(
    processes=(
        proc("m1:1:aaaaaaaaaaaa", tag="app", queues=("default",), labels=("worker",)),
        proc("m1:2:bbbbbbbbbbbb", tag="app", queues=("mailers",)),
        proc("m2:1:cccccccccccc", tag="other", quiet=True),
        proc("m3:1:dddddddddddd", embedded=True),
        proc("m4:1:eeeeeeeeeeee", problem="info is not valid JSON"),
        ProcessRecord(identity="m5:1:ffffffffffff", hostname="m5", pid=1, alive=False),
        proc("m6:1:999999999999", beat_age_s=40.0),
    ),
    taken_at=1000.0,
)


def test_plan_targets_live_running_and_stalled_processes() -> None:
    plan = plan_quiet(FLEET, Filters())
    assert [p.identity for p in plan.targets] == [
        "m1:1:aaaaaaaaaaaa",
        "m1:2:bbbbbbbbbbbb",
        "m6:1:999999999999",
    ]
    assert {p.identity: o for p, o in plan.skipped} == {
        "m2:1:cccccccccccc": Outcome.ALREADY_QUIET,
        "m3:1:dddddddddddd": Outcome.EMBEDDED,
        "m4:1:eeeeeeeeeeee": Outcome.UNREADABLE,
        "m5:1:ffffffffffff": Outcome.DEAD,
    }
    assert plan.excluded == 0


@pytest.mark.parametrize(
    ("filters", "targets", "excluded"),
    [
        (Filters(hostnames=("m1",)), ["m1:1:aaaaaaaaaaaa", "m1:2:bbbbbbbbbbbb"], 5),
        (
            Filters(hostnames=("m[16]",)),
            ["m1:1:aaaaaaaaaaaa", "m1:2:bbbbbbbbbbbb", "m6:1:999999999999"],
            4,
        ),
        (Filters(tags=("app",)), ["m1:1:aaaaaaaaaaaa", "m1:2:bbbbbbbbbbbb"], 5),
        (Filters(labels=("worker",)), ["m1:1:aaaaaaaaaaaa"], 6),
        (Filters(queues=("mailers", "nope")), ["m1:2:bbbbbbbbbbbb"], 6),
        (Filters(identities=("m6:1:999999999999",)), ["m6:1:999999999999"], 6),
        (Filters(tags=("app",), queues=("default",)), ["m1:1:aaaaaaaaaaaa"], 6),
    ],
)
def test_filters(filters: Filters, targets: list[str], excluded: int) -> None:
    plan = plan_quiet(FLEET, filters)
    assert [p.identity for p in plan.targets] == targets
    assert plan.excluded == excluded


def test_unreadable_process_stays_in_scope_of_identity_filters() -> None:
    plan = plan_quiet(FLEET, Filters(hostnames=("m4",)))
    assert [(p.identity, o) for p, o in plan.skipped] == [("m4:1:eeeeeeeeeeee", Outcome.UNREADABLE)]
    assert plan_quiet(FLEET, Filters(tags=("app",))).skipped == ()


def target(pushed_at_ms: int = 100_000) -> Target:
    return Target(
        proc("m1:1:aaaaaaaaaaaa", beat=99.0), pushed_at_ms=pushed_at_ms, pushes=1, beat_seen=99.0
    )


def row(**kw: object) -> PollRow:
    values: dict[str, object] = {
        "in_set": True, "quiet": "false", "beat": "99.0", "pttl_ms": 55_000, "signals_len": 1,
    }  # fmt: skip
    values.update(kw)
    return PollRow(**values)  # type: ignore[arg-type]


def verdict(t: Target, r: PollRow, now_ms: int, until: Until = Until.DELIVERED) -> Verdict:
    return assess(t, r, now_ms, until)[1]


def test_waiting_while_the_signal_is_queued() -> None:
    # Last beat 5 s before now = 2 s before the push: nothing popped yet.
    assert verdict(target(), row(), now_ms=103_000) is Verdict.WAITING


def test_delivered_when_a_later_beat_popped_it() -> None:
    seen, v = assess(
        target(), row(signals_len=0, pttl_ms=59_000, beat="105.0"), 106_000, Until.DELIVERED
    )
    assert v is Verdict.CONFIRMED
    assert seen.last_beat_ms == 105_000 and seen.confirmed_at_ms == 106_000


def test_assess_does_not_change_the_target_it_is_given() -> None:
    t = target()
    assess(t, row(signals_len=0, pttl_ms=59_000, beat="105.0"), 106_000, Until.DELIVERED)
    assert t == target()


def test_until_quiet_needs_the_quiet_field() -> None:
    popped = row(signals_len=0, pttl_ms=59_000)
    assert verdict(target(), popped, 106_000, Until.QUIET) is Verdict.WAITING
    assert (
        verdict(target(), row(quiet="true", signals_len=0), 116_000, Until.QUIET)
        is Verdict.CONFIRMED
    )


def test_vanished_only_when_it_leaves_the_set_and_its_hash_lingers() -> None:
    """Sidekiq's clean exit: SREM, the hash expires on its own."""
    assert verdict(target(), row(in_set=False), 106_000, Until.QUIET) is Verdict.VANISHED


def test_gone_with_its_hash_is_absent_not_vanished() -> None:
    """Membership and hash gone at once is what a Redis that restarted empty looks like."""
    seen, v = assess(
        target(), row(in_set=False, pttl_ms=-2, quiet=None, beat=None, signals_len=0),
        106_000, Until.DELIVERED,
    )  # fmt: skip
    assert v is Verdict.WAITING and seen.absent
    assert finalize(seen).outcome is Outcome.LOST


def test_an_error_reply_is_never_read_as_an_exit() -> None:
    bad = PollRow(None, None, None, None, None, error="WRONGTYPE Operation against a key")
    seen, v = assess(target(), bad, 106_000, Until.DELIVERED)
    assert v is Verdict.WAITING and seen.problem and "WRONGTYPE" in seen.problem
    assert finalize(seen).outcome is Outcome.NOT_CONFIRMED


def test_expired_hash_still_in_the_set_is_waited_for() -> None:
    # Hung past 60 s: the hash expired but the process may come back.
    gone = row(pttl_ms=-2, quiet=None, beat=None, signals_len=1)
    seen, v = assess(target(), gone, 150_000, Until.DELIVERED)
    assert v is Verdict.WAITING
    # No beat for 60 s: stalled (hung or killed), whatever its last hash said.
    assert finalize(seen).outcome is Outcome.STALLED


def test_expired_signal_is_pushed_again() -> None:
    # The list expired 60 s after the push; the hash expired even earlier.
    gone = row(pttl_ms=-2, quiet=None, beat=None, signals_len=0)
    assert verdict(target(), gone, 160_000) is Verdict.PUSH
    assert verdict(target(), gone, 150_000) is Verdict.WAITING
    # A hash without TTL that never beat again: same.
    frozen = row(pttl_ms=-1, signals_len=0, beat="99.0")
    assert verdict(target(), frozen, 161_000) is Verdict.PUSH


def test_re_registration_after_expiry_is_not_a_delivery() -> None:
    # The process recovers 70 s after the push: its first beat pops an already-expired list.
    back = row(pttl_ms=60_000, signals_len=0, beat="170.0")
    assert verdict(target(), back, 170_000) is Verdict.PUSH


def test_back_after_vanishing_with_its_data_since_the_push_is_pushed_again() -> None:
    """A FLUSHALL, or a restart nobody saw: the list is gone, the next beat pops nothing."""
    gone = row(in_set=False, pttl_ms=-2, quiet=None, beat=None, signals_len=0)
    back = row(pttl_ms=59_000, signals_len=0, beat="105.0")
    seen, _ = assess(target(), gone, 104_000, Until.DELIVERED)
    assert seen.lost_after_push
    assert assess(seen, back, 106_000, Until.DELIVERED)[1] is Verdict.PUSH


def test_back_after_a_push_that_reached_the_new_server_is_confirmed() -> None:
    """Gone before the push went in (a restart seen by run_id): what it popped is the push."""
    lost = pushed(server_lost_data(target()), 101_000)
    gone = row(in_set=False, pttl_ms=-2, quiet=None, beat=None, signals_len=1)
    seen, _ = assess(lost, gone, 102_000, Until.DELIVERED)
    back = row(pttl_ms=59_000, signals_len=0, beat="105.0")
    assert assess(seen, back, 106_000, Until.DELIVERED)[1] is Verdict.CONFIRMED


def test_hash_without_ttl_counts_beats_by_value() -> None:
    t = target()
    assert verdict(t, row(pttl_ms=-1, signals_len=0, beat="99.0"), 105_000) is Verdict.WAITING
    assert verdict(t, row(pttl_ms=-1, signals_len=0, beat="104.0"), 105_000) is Verdict.CONFIRMED


def test_never_polled_is_not_confirmed_rather_than_stalled() -> None:
    assert finalize(target()).outcome is Outcome.NOT_CONFIRMED


def test_never_pushed_is_not_signalled() -> None:
    assert finalize(Target(proc("m1:1:aaaaaaaaaaaa"))).outcome is Outcome.NOT_SIGNALLED


def test_stalled_only_when_its_own_beat_is_overdue() -> None:
    """Sidekiq 7 beats every 10 s: 14 s since the last beat is late but not hung, 16 s is."""
    seen, _ = assess(target(), row(pttl_ms=46_000), 130_000, Until.DELIVERED)
    assert finalize(seen).outcome is Outcome.NOT_CONFIRMED
    seen, _ = assess(target(), row(pttl_ms=44_000), 130_000, Until.DELIVERED)
    assert finalize(seen).outcome is Outcome.STALLED


def test_mark_stamp_matches_sidekiq_deploy() -> None:
    # Sidekiq::Deploy floors to the minute, keys by UTC date, stamps with Time#iso8601.
    assert mark_stamp(1795677928.89) == ("20261126", "2026-11-26T07:25:00Z")


def test_deploy_record_round_trip() -> None:
    record = DeployRecord.start(
        deploy_id=new_deploy_id(1795677928.0, "abc123"),
        release="v42",
        strategy="bluegreen",
        started_at=1795677928.0,
        until="delivered",
        timeout_s=30,
        processes=FLEET.processes,
        servers=(),
        quiesce_version="0",
    )
    assert record.deploy_id == "20261126T072528Z-abc123"
    assert len(record.fleet) == 6  # the dead member is not part of the pre-deploy fleet
    record = record.with_outcomes(
        {"m1:1:aaaaaaaaaaaa": OutcomeEntry("confirmed", 1795677929.0, 1795677931.5, pushes=1)}
    )
    parsed, problem = parse_deploy_record(record.to_json())
    assert problem is None and parsed == record
    assert parsed.release == "v42" and parsed.state is DeployState.PENDING
    assert quiet_since(parsed, "m1:1:aaaaaaaaaaaa") == 1795677931.5
    assert quiet_since(parsed, "m2:1:cccccccccccc") is None
    assert parse_deploy_record("{not json")[0] is None


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:hunter2@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://default:hunter2@h.upstash.io:6379", "rediss://default:***@h.upstash.io:6379"),
        ("redis://host:6379/0?password=hunter2", "redis://host:6379/0?password=***"),
        ("redis://host:6379/0", "redis://host:6379/0"),
    ],
)
def test_masked_urls_never_show_the_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_settings_from_env_and_options() -> None:
    env = {"REDIS_URL": "redis://a:1/0, redis://b:2/0"}
    assert [t.url for t in build_settings(urls=[], environ=env).redis] == [
        "redis://a:1/0",
        "redis://b:2/0",
    ]
    provided = {
        "REDIS_PROVIDER": "MY_REDIS",
        "MY_REDIS": "redis://c:3/0",
        "REDIS_URL": "redis://x/0",
    }
    assert [t.url for t in build_settings(urls=[], environ=provided).redis] == ["redis://c:3/0"]
    assert [t.url for t in build_settings(urls=["redis://d:4/1"], environ=env).redis] == [
        "redis://d:4/1"
    ]
    assert build_settings(urls=[], environ={}).redis[0].url == "redis://127.0.0.1:6379/0"
    assert build_settings(urls=["redis://a:1"], environ={}, namespace="myapp:").namespace == "myapp"


@pytest.mark.parametrize(
    "url",
    ["http://host", "redis://", "redis://host:0", "redis://host:notaport", "redis://host/abc"],
)
def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_settings(urls=[url], environ={})
    assert "hunter2" not in str(err.value)


def test_bad_url_error_masks_password() -> None:
    with pytest.raises(ConfigError) as err:
        build_settings(urls=["http://u:hunter2@host"], environ={})
    assert "hunter2" not in str(err.value) and "***" in str(err.value)


def test_redis_provider_must_name_a_variable() -> None:
    with pytest.raises(ConfigError):
        build_settings(urls=[], environ={"REDIS_PROVIDER": "redis://x"})
    with pytest.raises(ConfigError):
        build_settings(urls=[], environ={"REDIS_PROVIDER": "UNSET_VAR"})
