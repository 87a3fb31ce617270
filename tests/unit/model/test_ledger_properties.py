"""Properties of the deploy ledger's pure model (hypothesis): scopes never mix, the
history is bounded and newest first, schema 4 round-trips, "quiet since" finds the
deploy that quieted a process."""

from __future__ import annotations

import dataclasses
import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quiesce.model.filters import Filters, scope_of
from quiesce.model.ledger import LEDGER_SIZE, quiet_since_any, select_history
from quiesce.model.record import DeployRecord, DeployState, parse_deploy_record
from quiesce.model.record_entries import FlyTarget, MachineEntry, OutcomeEntry
from quiesce.sidekiq.keys import DEPLOY_RECORD_TTL_S, Keys

NOW = 1_800_000_000.0
texts = st.text(max_size=12)
names = st.text(alphabet="abcdefghij-_:|=,%", min_size=1, max_size=8)


def record(deploy_id: str, scope: str, started_at: float, **kw: object) -> DeployRecord:
    return DeployRecord(
        deploy_id=deploy_id,
        release=None,
        strategy="immediate",
        started_at=started_at,
        until="delivered",
        timeout_s=30.0,
        scope=scope,
        **kw,  # type: ignore[arg-type]
    )


@st.composite
def ledgers(draw: st.DrawFn) -> tuple[dict[str, str], list[DeployRecord]]:
    """A ledger hash as Redis would hold it: records of several scopes mixed (a reader
    must never trust the key alone), some expired."""
    scopes = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    count = draw(st.integers(0, 45))
    records = []
    for i in range(count):
        scope = draw(st.sampled_from(scopes))
        age = draw(st.floats(0, DEPLOY_RECORD_TTL_S * 1.5, allow_nan=False))
        records.append(record(f"d{i:03d}", scope, NOW - age))
    return {r.deploy_id: r.to_json() for r in records}, records


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(ledgers(), st.data())
def test_a_scope_reads_only_its_own_records_newest_first_and_bounded(
    ledger: tuple[dict[str, str], list[DeployRecord]], data: st.DataObject
) -> None:
    hash_, records = ledger
    scope = data.draw(st.sampled_from(sorted({r.scope for r in records} | {"other"})))
    history = select_history(hash_, scope, NOW)
    mine = [r for r in records if r.scope == scope and r.started_at >= NOW - DEPLOY_RECORD_TTL_S]
    assert all(r.scope == scope for r in history.records)
    assert len(history.records) == min(LEDGER_SIZE, len(mine))
    started = [r.started_at for r in history.records]
    assert started == sorted(started, reverse=True)
    newest = sorted(mine, key=lambda r: (r.started_at, r.deploy_id), reverse=True)
    assert [r.deploy_id for r in history.records] == [r.deploy_id for r in newest[:LEDGER_SIZE]]
    # Whatever is not kept is dropped on the next write; nothing kept is dropped.
    kept = {r.deploy_id for r in history.records}
    assert kept.isdisjoint(history.drop) and kept | set(history.drop) == set(hash_)


@given(st.lists(names, min_size=2, max_size=2, unique=True), names)
def test_two_apps_never_share_a_scope_or_a_ledger(apps: list[str], namespace: str) -> None:
    one, two = (scope_of(app, namespace) for app in apps)
    assert one != two
    assert Keys(namespace).ledger(one) != Keys(namespace).ledger(two)


@given(st.lists(names, max_size=3), st.lists(names, max_size=3), st.lists(names, max_size=3))
def test_a_scope_does_not_depend_on_the_order_filters_were_given(
    tags: list[str], labels: list[str], excluded: list[str]
) -> None:
    scopes = {
        scope_of(None, "ns", Filters(tags=t, labels=la, exclude_tags=e))
        for t, la, e in itertools.product(
            itertools.permutations(tags), itertools.permutations(labels), [tuple(excluded)]
        )
    }
    assert len(scopes) == 1
    # Different filters are different fleets: a tag moved to the labels is another scope.
    if tags and not set(tags) & set(labels):
        assert scope_of(None, "ns", Filters(tags=tuple(tags))) != scope_of(
            None, "ns", Filters(labels=tuple(tags))
        )


machines = st.builds(
    MachineEntry,
    id=st.text(alphabet="0123456789abcdef", min_size=14, max_size=14),
    process_group=texts,
    image_ref=texts,
    release_version=texts,
    state=st.sampled_from(["started", "stopped", "replacing", "destroyed", ""]),
)


@given(
    scope=texts,
    target=st.none() | st.builds(FlyTarget, app=texts, image_ref=texts),
    entries=st.lists(machines, max_size=6, unique_by=lambda m: m.id),
    checked=st.booleans(),
    since=st.none() | texts,
)
def test_schema_4_round_trips(
    scope: str,
    target: FlyTarget | None,
    entries: list[MachineEntry],
    checked: bool,
    since: str | None,
) -> None:
    outcome = OutcomeEntry("already_quiet", confirmed_at=NOW - 5, quiet_since_deploy=since)
    original = record("d1", scope, NOW, outcomes={"h:1:abc": outcome}).with_fly(
        target, entries, checked=checked
    )
    parsed, problem = parse_deploy_record(original.to_json())
    assert problem is None and parsed is not None
    assert parsed.version == 4
    assert (parsed.scope, parsed.target, parsed.fly_checked) == (scope, target, checked)
    assert parsed.machines == original.machines
    assert parsed.outcomes == original.outcomes


@given(st.integers(0, 6), st.integers(1, 6), st.booleans())
def test_quiet_since_any_names_the_deploy_that_quieted_the_process(
    before: int, after: int, aged_out: bool
) -> None:
    """``before`` deploys without the process, the one that confirmed it, then ``after``
    retries that found it already quiet (each carrying the time forward)."""
    ident, quieted_at = "m:1:abc", NOW - 1000
    chain = [record(f"b{i}", "s", NOW - 5000 + i) for i in range(before)]
    confirmed = OutcomeEntry("confirmed", NOW - 2001, quieted_at, 1)
    origin = record("origin", "s", NOW - 2000, outcomes={ident: confirmed})
    chain.append(origin)
    for i in range(after):
        entry = OutcomeEntry("already_quiet", None, quieted_at, 0, "origin")
        chain.append(record(f"a{i}", "s", NOW - 900 + i, outcomes={ident: entry}))
    history = tuple(reversed(chain))  # newest first
    if aged_out:
        history = tuple(r for r in history if r.deploy_id != "origin")
    found = quiet_since_any(history, ident)
    assert found is not None
    deploy, at = found
    assert at == quieted_at
    assert deploy.deploy_id == ("a0" if aged_out else "origin")
    assert quiet_since_any(history, "m:2:other") is None


def test_a_legacy_record_is_only_a_fallback() -> None:
    legacy = dataclasses.replace(record("old", "", NOW - 10), version=3).to_json()
    legacy = legacy.replace('"version":4', '"version":3').replace('"scope":"",', "")
    assert select_history({}, "app:x", NOW, legacy=legacy).legacy
    mine = record("new", "app:x", NOW).to_json()
    picked = select_history({"new": mine}, "app:x", NOW, legacy=legacy)
    assert [r.deploy_id for r in picked.records] == ["new"] and not picked.legacy
    # A schema 4 record in the global key belongs to some scope: never another's fallback.
    other = record("x", "app:y", NOW).to_json()
    assert select_history({}, "app:x", NOW, legacy=other).records == ()
    assert select_history(None, None, NOW, legacy=other).records[0].deploy_id == "x"
    assert DeployState.PENDING is record("p", "s", NOW).state


def test_a_record_from_the_future_is_never_the_latest() -> None:
    ahead = record("ahead", "s", NOW + 86_400.0).to_json()
    now = record("now", "s", NOW - 1).to_json()
    history = select_history({"ahead": ahead, "now": now}, "s", NOW)
    assert [r.deploy_id for r in history.records] == ["now"]
    assert history.drop == ("ahead",) and "starts in the future" in history.problems[0]
