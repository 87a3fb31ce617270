"""The deploy record: typed round trip, schema 1 records, and the one tolerant reader."""

from __future__ import annotations

import json
from typing import Any

import pytest

from quiesce.model.record import DeployRecord, DeployState, parse_deploy_record
from quiesce.model.record_entries import FleetEntry, OutcomeEntry, ServerEntry
from quiesce.model.record_fields import CAP_IDENTITY, CAP_LABELS, CAP_TEXT

# What quiesce 0.x (schema 1) wrote after a finished run.
SCHEMA_1 = {
    "deploy_id": "20261126T072528Z-abc123",
    "release": "v41",
    "strategy": "bluegreen",
    "started_at": 1795677928.0,
    "until": "delivered",
    "timeout_s": 30.0,
    "fleet": [
        {
            "identity": "m1:1:aaaaaaaaaaaa", "hostname": "m1", "pid": 1,
            "started_at": 1795670000.5, "tag": "app", "labels": ["a"], "version": "7.3.10",
            "concurrency": 5, "redis": "redis://h:6379/0",
        }
    ],
    "servers": [{"redis": "redis://h:6379/0", "connected_clients": 12, "maxclients": 10000}],
    "outcomes": {
        "m1:1:aaaaaaaaaaaa": {"outcome": "confirmed", "confirmed_at": 1795677931.5},
        "m2:1:bbbbbbbbbbbb": {"outcome": "already_quiet"},
    },
    "finished_at": 1795677932.0,
    "quiesce_version": "0.1.0",
    "schema": 1,
}  # fmt: skip


def full_record() -> DeployRecord:
    return DeployRecord(
        deploy_id="d1",
        release=None,
        strategy="immediate",
        started_at=1000.0,
        until="quiet",
        timeout_s=45.0,
        state=DeployState.FAILED,
        failure="Redis went away during the wait",
        finished_at=1010.5,
        fleet=(FleetEntry("h:1:aaaaaaaaaaaa", "h", 1, 990.0, "", ("x", "y"), None, None, "r"),),
        servers=(ServerEntry("r", 3, 100, "abc"),),
        outcomes={"h:1:aaaaaaaaaaaa": OutcomeEntry("stalled", 1000.1, None, 2)},
        quiesce_version="1.0.0",
    )


def test_round_trip_keeps_every_field() -> None:
    record = full_record()
    parsed, problem = parse_deploy_record(record.to_json())
    assert problem is None and parsed == record
    data = json.loads(record.to_json())
    assert data["version"] == 4 and data["state"] == "failed" and "schema" not in data


def test_schema_1_records_are_read() -> None:
    record, problem = parse_deploy_record(json.dumps(SCHEMA_1))
    assert problem is None and record is not None
    assert record.version == 1 and record.state is DeployState.COMPLETE
    assert record.fleet[0].labels == ("a",) and record.fleet[0].started_at == 1795670000.5
    assert record.servers == (ServerEntry("redis://h:6379/0", 12, 10000, None),)
    confirmed = record.outcomes["m1:1:aaaaaaaaaaaa"]
    assert confirmed == OutcomeEntry("confirmed", None, 1795677931.5, 0)
    assert record.quiet_since("m1:1:aaaaaaaaaaaa") == 1795677931.5
    assert record.extra == {}
    rewritten = json.loads(record.to_json())
    assert rewritten["version"] == 4 and "schema" not in rewritten


def test_schema_1_record_of_an_unfinished_run_is_pending() -> None:
    unfinished = {**SCHEMA_1, "finished_at": None}
    record, _ = parse_deploy_record(json.dumps(unfinished))
    assert record is not None and record.state is DeployState.PENDING


def test_unknown_top_level_fields_survive_a_rewrite() -> None:
    data = {**json.loads(full_record().to_json()), "rejoin": {"m1": "ok"}, "version": 5}
    record, problem = parse_deploy_record(json.dumps(data))
    assert problem is None and record is not None
    assert record.extra == {"rejoin": {"m1": "ok"}} and record.version == 5
    again = json.loads(record.finish(2000.0).to_json())
    assert again["rejoin"] == {"m1": "ok"} and again["state"] == "complete"
    assert again["failure"] is None


def test_finish_and_with_outcomes_return_copies() -> None:
    start = DeployRecord("d", None, "s", 1.0, "delivered", 30.0)
    done = start.with_outcomes({"a": OutcomeEntry("confirmed", 1.5, 2.0, 1)}).finish(3.0)
    assert start.outcomes == {} and start.state is DeployState.PENDING
    assert done.state is DeployState.COMPLETE and done.finished_at == 3.0
    failed = start.finish(3.0, failure="interrupted")
    assert failed.state is DeployState.FAILED and failed.failure == "interrupted"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('"just a string"', "not a JSON object"),
        ("[" * 1000 + "]" * 1000, "nested too deeply"),
        ('{"a":' * 100_000, "nested too deeply"),
        ('{"deploy_id": "x", "started_at": "\udcff"}', "not valid UTF-8"),
        ('{"deploy_id": "x", "started_at": ' + "9" * 5000 + "}", "not valid JSON"),
        ('{"deploy_id": "x", "started_at": "yesterday"}', "'started_at' is not a number"),
        ('{"deploy_id": "x", "started_at": NaN}', "'started_at' is not a number"),
        ('{"deploy_id": "x", "started_at": true}', "'started_at' is not a number"),
        ('{"started_at": 1}', "'deploy_id' is not a string"),
        ('{"deploy_id": "x", "started_at": 1, "state": "done"}', "'state' is not pending"),
        ('{"deploy_id": "x", "started_at": 1, "outcomes": []}', "'outcomes' is not an object"),
        ('{"deploy_id": "x", "started_at": 1, "fleet": {}}', "'fleet' is not a list"),
        ('{"deploy_id": "x", "started_at": 1, "release": 42}', "'release' is not a string"),
    ],
)
def test_unusable_records_give_one_line_not_an_exception(text: str, needle: str) -> None:
    record, problem = parse_deploy_record(text)
    assert record is None
    assert problem is not None and needle in problem and "\n" not in problem
    assert len(problem) < 200


def test_nothing_stored_is_no_problem() -> None:
    assert parse_deploy_record(None) == (None, None)
    assert parse_deploy_record("") == (None, None)


def test_a_bad_entry_is_dropped_and_the_rest_kept() -> None:
    data: dict[str, Any] = json.loads(json.dumps(SCHEMA_1))
    data["outcomes"]["m3:1:cccccccccccc"] = {"outcome": "confirmed", "pushed_at": "soon"}
    data["outcomes"]["m4:1:dddddddddddd"] = "confirmed"
    data["fleet"].append({"identity": 7})
    data["servers"].append(None)
    record, problem = parse_deploy_record(json.dumps(data))
    assert record is not None
    assert set(record.outcomes) == {"m1:1:aaaaaaaaaaaa", "m2:1:bbbbbbbbbbbb"}
    assert len(record.fleet) == 1 and len(record.servers) == 1
    assert problem is not None and "\n" not in problem
    assert "dropped fleet[1]" in problem and "(and 3 more)" in problem


def schema_2_text(record: DeployRecord) -> str:
    """What quiesce wrote before schema 3: every entry whole, the URL in each."""
    data = {
        "version": 2, "deploy_id": record.deploy_id, "release": record.release,
        "strategy": record.strategy, "started_at": record.started_at,
        "finished_at": record.finished_at, "until": record.until,
        "timeout_s": record.timeout_s, "state": record.state.value, "failure": record.failure,
        "fleet": [e.to_json() for e in record.fleet],
        "servers": [e.to_json() for e in record.servers],
        "outcomes": {k: e.to_json() for k, e in record.outcomes.items()},
        "quiesce_version": record.quiesce_version,
    }  # fmt: skip
    return json.dumps(data)


def fleet_record(count: int) -> DeployRecord:
    servers = (ServerEntry("redis://a:6379/0", 10, 100, "r1"), ServerEntry("redis://b:6379/0"))
    fleet = tuple(
        FleetEntry(
            identity=f"{i:014x}:{1 + i % 3}:{i:012x}",
            hostname=f"{i:014x}" if i % 5 else f"other-{i}",
            pid=1 + i % 3 if i % 7 else None,
            started_at=1795670000.125 + i,
            tag="app" if i % 4 else "",
            labels=("worker",) if i % 6 else ("a", "b"),
            version="7.3.10" if i % 8 else None,
            concurrency=10 if i % 9 else 5,
            redis=servers[i % 2].redis if i % 11 else "redis://unlisted:6379/0",
        )
        for i in range(200)
    )
    outcomes = {
        e.identity: OutcomeEntry(
            "signalled" if i % 3 else "confirmed",
            1795677928.125,
            1795677930.5 + i if i % 3 == 0 else None,
            1 if i % 10 else 2,
        )
        for i, e in enumerate(fleet)
    }
    return DeployRecord(
        "d3", "v9", "immediate", 1795677928.0, "quiet", 30.0, fleet=fleet, servers=servers,
        outcomes=outcomes, quiesce_version="1.0.0",
    )  # fmt: skip


def test_schema_3_round_trips_a_mixed_fleet() -> None:
    record = fleet_record(200)
    parsed, problem = parse_deploy_record(record.to_json())
    assert problem is None and parsed == record


def test_schema_2_records_are_still_read() -> None:
    record = fleet_record(200)
    parsed, problem = parse_deploy_record(schema_2_text(record))
    assert problem is None and parsed is not None
    assert parsed.version == 2 and parsed.fleet == record.fleet
    assert parsed.outcomes == record.outcomes and parsed.servers == record.servers


def test_schema_3_is_under_half_of_schema_2() -> None:
    record = fleet_record(200)
    assert len(record.to_json()) * 2 < len(schema_2_text(record))  # a mixed fleet: 1/3
    data = json.loads(record.to_json())
    assert data["fleet_common"]["r"] in (0, 1) and data["outcomes_common"]["o"] == "signalled"
    assert all(None not in entry.values() for entry in data["fleet"][1:5])


def test_a_hostile_heartbeat_copies_at_most_the_caps_into_a_record() -> None:
    huge = "x" * 1_000_000
    hostile = FleetEntry(
        "m1:1:aaaaaaaaaaaa", huge, 1, None, huge, (huge,) * 100, huge, 5, "redis://a:6379/0"
    )
    long_identity = FleetEntry(f"{huge}:1:bbbbbbbbbbbb", huge, 1)
    record = DeployRecord(
        "d", None, "immediate", 1.0, "quiet", 30.0, failure=huge,
        fleet=(hostile, long_identity), servers=(ServerEntry("redis://a:6379/0"),),
        outcomes={
            "m1:1:aaaaaaaaaaaa": OutcomeEntry(huge), long_identity.identity: OutcomeEntry("x")
        },
    )  # fmt: skip
    text = record.to_json()
    assert len(text) < CAP_IDENTITY + CAP_TEXT * (CAP_LABELS + 5) + 1000
    parsed, problem = parse_deploy_record(text)
    assert problem is None and parsed is not None
    (entry,) = parsed.fleet
    assert entry.hostname == huge[:CAP_IDENTITY] and entry.tag == huge[:CAP_TEXT]
    assert entry.labels == (huge[:CAP_TEXT],) * CAP_LABELS and entry.version == huge[:CAP_TEXT]
    assert list(parsed.outcomes) == ["m1:1:aaaaaaaaaaaa"]
    assert parsed.failure == huge[:CAP_TEXT]


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"fleet_common": []}, "'fleet_common' is not an object"),
        ({"fleet": [{"i": "h:1:a", "r": 9}]}, "'r' is not a server index"),
        ({"fleet": [{"i": "h:1:a", "p": "one"}]}, "'p' is not an integer"),
        ({"outcomes": {"h:1:a": {"o": 1}}}, "'o' is not a string"),
    ],
)
def test_malformed_schema_3_parts_are_reported(change: dict[str, Any], needle: str) -> None:
    data = {**json.loads(fleet_record(3).to_json()), **change}
    _, problem = parse_deploy_record(json.dumps(data))
    assert problem is not None and needle in problem
