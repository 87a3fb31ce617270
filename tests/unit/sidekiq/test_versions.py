"""The version table: every threshold against the protocol doc and the captured fixtures,
and the simulator writing what each band writes."""

from __future__ import annotations

import json
from typing import Any

import fakeredis
import pytest

from quiesce.model.fleet import beat_overdue
from quiesce.sidekiq.keys import Keys
from quiesce.sidekiq.versions import (
    BANDS,
    FIRST_UNSUPPORTED,
    OLDEST_SUPPORTED,
    JobTimeUnits,
    Weights,
    WorkPayload,
    band_for,
    bands_without_version,
    parse_version,
    range_text,
    supported_versions_help,
)
from quiesce.sim.simulator import SimulatedFleet, SimulatedProcess, make_processes
from tests.support import FIXTURES


def test_bands_are_ordered_and_bounded() -> None:
    firsts = [b.first for b in BANDS]
    assert firsts == sorted(set(firsts))
    assert OLDEST_SUPPORTED == (5, 2, 0)
    assert FIRST_UNSUPPORTED == (9, 0, 0)  # derived: the major after the newest row
    assert {b.quiet_signal for b in BANDS} == {"TSTP"}


# version, beat s, hash fields, then 1/0 for: concurrency in info, capsules, info.version,
# info.embedded; weights, work key, work payload, job time units. From the protocol doc.
_FLOAT, _MS = JobTimeUnits.FLOAT_SECONDS, JobTimeUnits.INT_MILLISECONDS
_OBJ, _STR = WorkPayload.OBJECT, WorkPayload.JSON_STRING
_NO, _HASH, _CAPS = Weights.NONE, Weights.HASH, Weights.PER_CAPSULE
_R, _RR, _RRC = {"rss"}, {"rss", "rtt_us"}, {"rss", "rtt_us", "concurrency"}
DOC = [
    ("5.2.0", 5, set(), 1, 0, 0, 0, _NO, ":workers", _OBJ, _FLOAT),
    ("6.0.1", 5, set(), 1, 0, 0, 0, _NO, ":workers", _OBJ, _FLOAT),
    ("6.0.2", 5, set(), 1, 0, 0, 0, _NO, ":workers", _STR, _FLOAT),
    ("6.1.2", 5, set(), 1, 0, 0, 0, _NO, ":workers", _STR, _FLOAT),
    ("6.1.3", 5, _R, 1, 0, 0, 0, _NO, ":workers", _STR, _FLOAT),
    ("6.2.0", 5, _RR, 1, 0, 0, 0, _NO, ":workers", _STR, _FLOAT),
    ("6.4.1", 5, _RR, 1, 0, 0, 0, _NO, ":workers", _STR, _FLOAT),
    ("6.4.2", 5, _RR, 1, 0, 0, 0, _NO, ":work", _STR, _FLOAT),
    ("6.5.12", 5, _RR, 1, 0, 0, 0, _NO, ":work", _STR, _FLOAT),
    ("7.0.0", 10, _RR, 1, 0, 0, 0, _NO, ":work", _STR, _FLOAT),
    ("7.0.1", 10, _RR, 1, 0, 0, 0, _NO, ":work", _STR, _FLOAT),
    ("7.0.2", 10, _RR, 1, 0, 1, 0, _HASH, ":work", _STR, _FLOAT),
    ("7.0.3", 10, _RR, 1, 0, 1, 1, _CAPS, ":work", _STR, _FLOAT),
    ("7.3.10", 10, _RR, 1, 0, 1, 1, _CAPS, ":work", _STR, _FLOAT),
    ("8.0.0", 10, _RR, 1, 0, 1, 1, _CAPS, ":work", _STR, _MS),
    ("8.0.8", 10, _RR, 1, 0, 1, 1, _CAPS, ":work", _STR, _MS),
    ("8.0.9", 10, _RR, 1, 1, 1, 1, _CAPS, ":work", _STR, _MS),
    ("8.1.1", 10, _RR, 1, 1, 1, 1, _CAPS, ":work", _STR, _MS),
    ("8.1.2", 10, _RRC, 0, 1, 1, 1, _CAPS, ":work", _STR, _MS),
    ("8.1.7", 10, _RRC, 0, 1, 1, 1, _CAPS, ":work", _STR, _MS),
]


@pytest.mark.parametrize("row", DOC, ids=[r[0] for r in DOC])
def test_every_threshold_matches_the_protocol_doc(row: tuple[Any, ...]) -> None:
    text, beat, fields, conc_info, capsules, has_version, has_embedded, weights, *rest = row
    work_key, payload, units = rest
    numbers = parse_version(text)
    assert numbers is not None
    band = band_for(numbers)
    assert band is not None
    assert band.beat_interval_s == beat
    assert band.hash_fields == fields
    assert band.concurrency_in_info is bool(conc_info)
    assert band.concurrency_in_hash is ("concurrency" in fields)
    assert band.capsules_in_info is bool(capsules)
    assert band.info_has_version is bool(has_version)
    assert band.info_has_embedded is bool(has_embedded)
    assert band.embedded_ignores_signals is bool(has_embedded)  # both from 7.0.3
    assert band.weights is weights
    assert band.work_key_suffix == work_key
    assert band.work_payload is payload
    assert band.job_time_units is units


def test_outside_the_table() -> None:
    assert band_for((5, 1, 9)) is None
    assert band_for((5, 1, 9), allow_newer=True) is None  # never older than 5.2
    assert band_for((9, 0, 0)) is None
    assert band_for((8, 9, 0)) is BANDS[-1]  # a later 8.x reads as the newest row
    assert band_for((9, 0, 0), allow_newer=True) is BANDS[-1]
    assert band_for((12, 3, 4), allow_newer=True) is BANDS[-1]
    assert parse_version("7.3") == (7, 3, 0)
    assert parse_version("8.1.7.pre") == (8, 1, 7)
    assert parse_version("banana") is None


def test_help_text_comes_from_the_table() -> None:
    text = supported_versions_help()
    assert "5.2 to 8.x" in text
    assert "5 s up to 6.x, 10 s from 7.0.0" in text
    assert "--allow-newer-sidekiq" in text


@pytest.mark.parametrize(
    ("present", "text", "interval"),
    [
        ({"rss", "rtt_us"}, "6.2-7.0.1", 10.0),  # 7.0.0/7.0.1 look like 6.5 but beat every 10 s
        ({"rtt_us"}, "6.2-7.0.1", 10.0),
        ({"rss"}, "6.1.3-6.1.x", 5.0),
        (set(), "5.2-6.1.2", 5.0),
        ({"concurrency"}, "5.2-7.0.1", 10.0),  # impossible without info.version: widest
    ],
)
def test_inference_without_version_field(present: set[str], text: str, interval: float) -> None:
    bands = bands_without_version(frozenset(present))
    assert range_text(bands) == text
    assert max(b.beat_interval_s for b in bands) == interval


def fixture(version: str, scenario: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (FIXTURES / f"sidekiq-{version}" / f"{scenario}.json").read_text()
    )
    return data


@pytest.mark.parametrize("version", ["6.4.1", "7.3.10", "8.1.7"])
def test_table_and_simulator_agree_with_real_sidekiq(version: str) -> None:
    """What the fixtures captured from real processes is what the band says, and what the
    simulator writes for that version: same hash fields, same info keys, same work key."""
    numbers = parse_version(version)
    assert numbers is not None
    band = band_for(numbers)
    assert band is not None
    idle = fixture(version, "idle")
    real = idle["keys"][idle["identity"]]["value"]
    assert set(real) - {"info", "busy", "beat", "quiet"} == band.hash_fields
    sim = SimulatedProcess(identity="vm:1:abcdefabcdef", hostname="vm", pid=1, version=version)
    assert set(sim.fields(1.0)) == set(real)
    assert set(json.loads(sim.info_json())) == set(json.loads(real["info"]))
    busy = fixture(version, "busy")
    assert f"{busy['identity']}{band.work_key_suffix}" in busy["keys"]


@pytest.mark.parametrize("version", ["5.2.10", "6.1.3", "7.0.2", "7.0.3", "8.0.9", "8.1.2"])
def test_simulator_writes_each_bands_fields(version: str) -> None:
    proc = SimulatedProcess(identity="vm:1:abcdefabcdef", hostname="vm", pid=1, version=version)
    band = proc.band
    fields = proc.fields(1.0)
    info = json.loads(proc.info_json())
    assert set(fields) - {"info", "busy", "beat", "quiet"} == band.hash_fields
    assert ("concurrency" in info) is band.concurrency_in_info
    assert ("capsules" in info) is band.capsules_in_info
    assert ("version" in info) is band.info_has_version
    assert ("embedded" in info) is band.info_has_embedded
    kinds: dict[Weights, type] = {Weights.NONE: type(None), Weights.HASH: dict}
    assert isinstance(info.get("weights"), kinds.get(band.weights, list))


def test_simulator_pops_one_signal_per_beat() -> None:
    fake = fakeredis.FakeRedis(decode_responses=True)
    proc = make_processes(1, seed=4)[0]
    fleet = SimulatedFleet(fake, [proc])
    fake.lpush(f"{proc.identity}-signals", "TSTP", "TTIN")
    assert fleet.beat([proc], 1.0) == ["TSTP"]  # FIFO: oldest first
    assert fleet.beat([proc], 2.0) == ["TTIN"]
    assert fleet.beat([proc], 3.0) == [None]
    assert fake.ttl(proc.identity) == 60 and fake.sismember("processes", proc.identity)


def test_simulated_quiet_appears_one_beat_after_the_pop() -> None:
    fake = fakeredis.FakeRedis(decode_responses=True)
    (proc,) = make_processes(1, seed=5)
    now = [100.0]
    fleet = SimulatedFleet(fake, [proc], beat_interval_s=1.0, clock=lambda: now[0])
    fleet.beat_due()
    fake.lpush(f"{proc.identity}-signals", "TSTP")
    now[0] += 2
    fleet.beat_due()  # pops TSTP: still reports the state before it
    assert fake.hget(proc.identity, "quiet") == "false" and proc.quiet
    now[0] += 2
    fleet.beat_due()
    assert fake.hget(proc.identity, "quiet") == "true"


@pytest.mark.parametrize(("version", "work_key"), [("6.4.1", ":workers"), ("7.3.10", ":work")])
def test_leaving_unlinks_the_versions_work_hash(version: str, work_key: str) -> None:
    fake = fakeredis.FakeRedis(decode_responses=True)
    procs = make_processes(2, seed=6, version=version)
    fleet = SimulatedFleet(fake, procs, keys=Keys("ns"))
    fleet.beat(procs, 1.0)
    for p in procs:
        fake.hset(f"ns:{p.identity}{work_key}", "tid", "{}")
    fleet.leave_all()
    assert fake.scard("ns:processes") == 0
    assert all(p.stopped for p in procs)
    assert not any(fake.exists(f"ns:{p.identity}{work_key}") for p in procs)
    assert all(fake.exists(f"ns:{p.identity}") for p in procs)  # the hash lingers, as in Sidekiq


@pytest.mark.parametrize(("version", "ignores"), [("7.0.2", False), ("7.0.3", True)])
def test_embedded_ignores_signals_from_7_0_3(version: str, ignores: bool) -> None:
    proc = SimulatedProcess("h:1:abcdefabcdef", "h", 1, version=version, embedded=True)
    proc.handle("TSTP")
    assert proc.signals_seen == ["TSTP"] and proc.quiet is not ignores


@pytest.mark.parametrize(
    ("age", "interval", "overdue"),
    [(None, 10.0, False), (14.9, 10.0, False), (15.1, 10.0, True), (10.1, 5.0, True)],
)
def test_beat_overdue(age: float | None, interval: float, overdue: bool) -> None:
    assert beat_overdue(age, interval) is overdue
