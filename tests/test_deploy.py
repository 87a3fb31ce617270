"""The deploy record: typed round trip, schema 1 records, and the one tolerant reader."""

from __future__ import annotations

import json
from typing import Any

import pytest

from quiesce.deploy import (
    DeployRecord,
    DeployState,
    FleetEntry,
    OutcomeEntry,
    ServerEntry,
    parse_deploy_record,
)

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
    assert data["version"] == 2 and data["state"] == "failed" and "schema" not in data


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
    assert rewritten["version"] == 2 and "schema" not in rewritten


def test_schema_1_record_of_an_unfinished_run_is_pending() -> None:
    unfinished = {**SCHEMA_1, "finished_at": None}
    record, _ = parse_deploy_record(json.dumps(unfinished))
    assert record is not None and record.state is DeployState.PENDING


def test_unknown_top_level_fields_survive_a_rewrite() -> None:
    data = {**json.loads(full_record().to_json()), "rejoin": {"m1": "ok"}, "version": 3}
    record, problem = parse_deploy_record(json.dumps(data))
    assert problem is None and record is not None
    assert record.extra == {"rejoin": {"m1": "ok"}} and record.version == 3
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
