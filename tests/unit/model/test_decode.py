"""Decoding heartbeats captured from real Sidekiq 6.4.1, 7.3.10 and 8.1.7 processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quiesce.model.decode import (
    decode_process,
    decode_snapshot,
    parse_float,
    printable,
    read_version,
)
from quiesce.model.fleet import ProcessState
from quiesce.sidekiq.keys import PROCESS_FIELDS
from quiesce.sidekiq.rows import RawProcess, RawSnapshot
from tests.support import FIXTURES
from tests.support.captures import load, raw_row

VERSIONS = ("6.4.1", "7.3.10", "8.1.7")
SCENARIOS = (
    "idle",
    "busy",
    "with-scheduled",
    "quiet-pending",
    "quiet",
    "after-quiet-enqueue",
    "after-term",
)


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("version", VERSIONS)
def test_every_fixture_decodes(version: str, scenario: str) -> None:
    capture = load(version, scenario)
    proc = decode_process(raw_row(capture), redis_now=capture["captured_at"])
    info = json.loads(capture["keys"][capture["identity"]]["value"]["info"])
    assert proc.problem is None
    assert proc.alive
    assert proc.identity == capture["identity"]
    assert proc.hostname == "vm" == proc.machine
    assert proc.pid == info["pid"]
    assert proc.concurrency == 2
    assert proc.queues == ("default", "low")
    assert proc.started_at == info["started_at"]
    assert proc.rss_kib is not None and proc.rss_kib > 1000
    assert proc.rtt_us is not None
    assert proc.version is not None
    assert proc.beat_age_s is not None and 0 <= proc.beat_age_s <= 60


@pytest.mark.parametrize("version", VERSIONS)
def test_versions_read_or_inferred(version: str) -> None:
    proc = decode_process(raw_row(load(version, "idle")), redis_now=0)
    assert proc.version is not None
    if version == "6.4.1":  # no `version` field before 7.0.2: inferred from rtt_us
        assert proc.version.inferred and proc.version.text == "6.2-7.0.1"
    else:
        assert not proc.version.inferred and proc.version.text == version
        assert proc.version.beat_interval_s == 10.0
    assert proc.tag == ("sample-sidekiq" if version == "8.1.7" else "")
    assert not proc.embedded


@pytest.mark.parametrize("version", VERSIONS)
def test_states_follow_the_scenarios(version: str) -> None:
    def state(scenario: str) -> ProcessState:
        capture = load(version, scenario)
        return decode_process(raw_row(capture), capture["captured_at"]).state

    assert state("idle") is ProcessState.RUNNING
    assert state("quiet-pending") is ProcessState.RUNNING
    assert state("quiet") is ProcessState.QUIET
    assert state("after-quiet-enqueue") is ProcessState.QUIET
    busy = decode_process(raw_row(load(version, "busy")), 0)
    assert busy.busy == 2


@pytest.mark.parametrize("version", VERSIONS)
def test_pending_signal_is_visible(version: str) -> None:
    proc = decode_process(raw_row(load(version, "quiet-pending")), 0)
    assert proc.pending_signals == ("TSTP",)
    assert not proc.quiet


def test_concurrency_moves_from_info_to_hash_in_8_1_2() -> None:
    capture = load("8.1.7", "idle")
    info = json.loads(capture["keys"][capture["identity"]]["value"]["info"])
    assert "concurrency" not in info  # the fixture proves the move
    row = raw_row(capture)
    assert decode_process(row, 0).concurrency == 2
    without_field = RawProcess(row.identity, {**row.fields, "concurrency": None}, row.pttl_ms)
    assert decode_process(without_field, 0).concurrency == 2  # summed from capsules


def test_member_without_hash_is_dead_not_an_error() -> None:
    row = RawProcess("web.1:12:abcdefabcdef", dict.fromkeys(PROCESS_FIELDS), pttl_ms=-2)
    proc = decode_process(row, 0)
    assert not proc.alive and proc.state is ProcessState.DEAD
    assert proc.hostname == "web.1" and proc.pid == 12


def test_identity_split_from_the_right() -> None:
    row = RawProcess("host:with:colons:7:abcdefabcdef", dict.fromkeys(PROCESS_FIELDS), -2)
    proc = decode_process(row, 0)
    assert (proc.hostname, proc.pid) == ("host:with:colons", 7)


@pytest.mark.parametrize(
    ("patch", "problem"),
    [
        ({"info": '{"hostname":"vm","pid":'}, "info is not valid JSON"),
        ({"info": "[1, 2]"}, "info JSON is not an object"),
        ({"info": None}, "hash has no 'info' field"),
        ({"busy": "lots"}, "field 'busy' is not an integer"),
        ({"quiet": "maybe"}, "field 'quiet'"),
        (
            {"info": '{"hostname":"vm","pid":1,"version":"9.0.0"}'},
            "unsupported Sidekiq version 9.0.0",
        ),
        ({"info": '{"hostname":"vm","pid":1,"version":"4.2.10"}'}, "unsupported Sidekiq version"),
        ({"info": '{"hostname":"vm","pid":1,"version":"banana"}'}, "unparseable Sidekiq version"),
        ({"info": '{"hostname":"vm","pid":1,"labels":"x"}'}, "info.labels is not a list"),
    ],
)
def test_malformed_rows_are_unreadable_not_fatal(
    patch: dict[str, str | None], problem: str
) -> None:
    row = raw_row(load("7.3.10", "idle"))
    proc = decode_process(RawProcess(row.identity, {**row.fields, **patch}, row.pttl_ms), 0)
    assert proc.state is ProcessState.UNREADABLE
    assert proc.problem is not None and problem in proc.problem
    assert proc.hostname == "vm"


def test_newer_sidekiq_only_with_allow_newer() -> None:
    row = raw_row(load("8.1.7", "idle"))
    info = json.loads(str(row.fields["info"]))
    for version, accepted in (("9.0.0", True), ("10.1.0", True), ("4.2.10", False)):
        fields = {**row.fields, "info": json.dumps({**info, "version": version})}
        proc = decode_process(RawProcess(row.identity, fields, 60000), 0)
        assert proc.state is ProcessState.UNREADABLE
        assert ("--allow-newer-sidekiq" in str(proc.problem)) is accepted
        lenient = decode_process(RawProcess(row.identity, fields, 60000), 0, allow_newer=True)
        assert (lenient.problem is None) is accepted, lenient.problem
        if accepted:
            assert lenient.version is not None and lenient.version.beat_interval_s == 10.0


def test_hash_without_ttl_uses_beat_for_age() -> None:
    row = raw_row(load("7.3.10", "idle"))
    beat = float(str(row.fields["beat"]))
    proc = decode_process(RawProcess(row.identity, row.fields, pttl_ms=-1), redis_now=beat + 3600)
    assert proc.beat_age_s == pytest.approx(3600)
    assert proc.state is ProcessState.STALLED


def test_embedded_flag() -> None:
    row = raw_row(load("7.3.10", "idle"))
    info = json.loads(str(row.fields["info"]))
    info["embedded"] = True
    proc = decode_process(
        RawProcess(row.identity, {**row.fields, "info": json.dumps(info)}, 60000), 0
    )
    assert proc.state is ProcessState.EMBEDDED


@pytest.mark.parametrize(
    ("fields", "text", "interval"),
    [
        ({"rtt_us": "5"}, "6.2-7.0.1", 10.0),
        ({"rss": "5"}, "6.1.3-6.1.x", 5.0),
        ({}, "5.2-6.1.2", 5.0),
    ],
)
def test_version_inference_without_version_field(
    fields: dict[str, str | None], text: str, interval: float
) -> None:
    version = read_version({}, fields)
    assert (version.text, version.inferred, version.beat_interval_s) == (text, True, interval)


def test_fixture_files_present() -> None:
    assert sorted(p.name for p in Path(FIXTURES).iterdir() if p.is_dir()) == [
        f"sidekiq-{v}" for v in VERSIONS
    ]


# -- hostile rows: one bad record must not stop the fleet ------------------------------


def idle_row(**patch: str | None) -> RawProcess:
    row = raw_row(load("7.3.10", "idle"))
    return RawProcess(row.identity, {**row.fields, **patch}, row.pttl_ms, row.signals)


def with_identity(row: RawProcess, identity: str) -> RawProcess:
    return RawProcess(identity, row.fields, row.pttl_ms, row.signals)


@pytest.mark.parametrize(
    ("identity", "problem"),
    [
        ("vm\udcff:1:abcdefabcdef", "identity is not valid UTF-8"),
        ("vm\x1b[2J:1:abcdefabcdef", None),  # signalled as usual, shown escaped
    ],
)
def test_hostile_identity_is_decoded_and_flagged_when_not_utf8(
    identity: str, problem: str | None
) -> None:
    proc = decode_process(with_identity(idle_row(), identity), 0)
    assert proc.problem == problem
    assert (proc.state is ProcessState.UNREADABLE) == (problem is not None)
    assert proc.identity == identity  # kept as read: it is the key to any later write
    assert proc.version is not None and proc.concurrency == 2  # the rest still decoded


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        (idle_row(info="[" * 1000 + "]" * 1000), "info JSON is nested too deeply"),
        (idle_row(info='{"a":' * 1000 + "1" + "}" * 1000), "info JSON is nested too deeply"),
        (idle_row(info='{"hostname":"vm\udcff","pid":1}'), "info is not valid UTF-8"),
        (idle_row(info='{"hostname":"vm\\udcff","pid":1}'), "info holds text that is not valid"),
        (idle_row(info='{"pid":' + "9" * 5000 + "}"), "info is not valid JSON"),
        (idle_row(info='{"hostname":"vm","pid":true}'), "info.hostname or info.pid"),
        (idle_row(info='{"hostname":"vm","tag":["x"]}'), "info.tag is not a string"),
        (idle_row(beat="soon"), "field 'beat' is not a number"),
        (idle_row(beat="nan"), "field 'beat' is not a number"),
        (idle_row(busy="9" * 5000), "field 'busy' is not an integer"),
        (idle_row(quiet="\udcff"), "field 'quiet'"),
    ],
)
def test_hostile_rows_are_unreadable_with_one_line(row: RawProcess, problem: str) -> None:
    proc = decode_process(row, 0)
    assert proc.state is ProcessState.UNREADABLE
    assert proc.problem is not None and problem in proc.problem
    assert "\n" not in proc.problem and len(proc.problem) < 200
    assert proc.problem.encode("utf-8")  # printable anywhere: no lone surrogates


def test_non_utf8_signal_entry_is_unreadable_and_shown_escaped() -> None:
    row = idle_row()
    bad = RawProcess(row.identity, row.fields, row.pttl_ms, ["TSTP", "\udcffoops"])
    proc = decode_process(bad, 0)
    assert proc.state is ProcessState.UNREADABLE
    assert proc.problem == "signal list holds an entry that is not valid UTF-8"
    assert proc.pending_signals == ("\udcffoops", "TSTP")  # kept as read; output escapes


def test_one_poisoned_row_leaves_the_others_alone() -> None:
    good = [raw_row(load(v, "idle")) for v in VERSIONS]
    poisoned = [
        with_identity(idle_row(info="[" * 1000 + "]" * 1000), "p1:1:000000000001"),
        RawProcess("p2:1:000000000002", good[0].fields, 50_000, ["\udc80"]),
        with_identity(idle_row(), "p3\udcfe:1:000000000003"),
        with_identity(idle_row(busy="\udcff"), "p4:1:000000000004"),
    ]
    raw = RawSnapshot(
        redis="r", time=0.0, rows=(good[0], *poisoned, *good[1:]), latest_deploy="[" * 5000
    )
    snapshot = decode_snapshot(raw)
    states = [p.state for p in snapshot.processes]
    assert (
        states
        == [ProcessState.RUNNING] + [ProcessState.UNREADABLE] * 4 + [ProcessState.RUNNING] * 2
    )
    assert [p.problem for p in snapshot.processes[:1] + snapshot.processes[5:]] == [None] * 3
    assert snapshot.latest_deploy is None
    assert snapshot.deploy_problem == "deploy record JSON is nested too deeply (r)"


def test_printable_escapes_bytes_and_control_characters() -> None:
    assert printable("plain host-1") == "plain host-1"
    assert printable("a\udcffb") == "a\\xffb"
    assert printable("x\x1b[2J\n") == "x\\x1b[2J\\n"


def test_parse_float_is_strict_about_garbage() -> None:
    assert parse_float("1.5") == 1.5
    assert parse_float(None) is None
    assert parse_float("soon") is None
    assert parse_float("nan") is None and parse_float("inf") is None
    assert parse_float("\udcff") is None
