"""Decoding work-in-progress hashes captured from real Sidekiq 6.4.1, 7.3.10 and 8.1.7."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from quiesce.model.decode import decode_snapshot
from quiesce.model.drain import queue_jobs, running_jobs
from quiesce.sidekiq.keys import WORK_SUFFIXES
from quiesce.sidekiq.rows import RawSnapshot
from quiesce.sidekiq.versions import JobTimeUnits
from quiesce.sidekiq.work import decode_work, epoch_seconds, job_time, work_suffixes
from tests.support.captures import load, raw_row

VERSIONS = ("6.4.1", "7.3.10", "8.1.7")
WORK_KEY = {"6.4.1": ":workers", "7.3.10": ":work", "8.1.7": ":work"}


def snapshot_of(capture: dict[str, Any], *, time: float | None = None) -> Any:
    """The snapshot quiesce reads with ``jobs=True``: both work hash names, as Redis has them."""
    identity = capture["identity"]
    work = {
        suffix: capture["keys"].get(identity + suffix, {}).get("value", {})
        for suffix in WORK_SUFFIXES
    }
    row = dataclasses.replace(raw_row(capture), work=work)
    now = capture["captured_at"] if time is None else time
    return decode_snapshot(RawSnapshot("redis://r", now, (row,)))


@pytest.mark.parametrize("version", VERSIONS)
def test_busy_fixture_lists_both_sleep_jobs(version: str) -> None:
    capture = load(version, "busy")
    identity = capture["identity"]
    stored = capture["keys"][identity + WORK_KEY[version]]["parsed"]
    (proc,) = snapshot_of(capture).processes
    assert proc.work is not None and proc.work.problems == ()
    assert proc.work.entries == 2 == proc.busy
    jobs = {j.jid: j for j in proc.work.jobs}
    expected = {e["payload__parsed"]["jid"]: (tid, e) for tid, e in stored.items()}
    assert set(jobs) == set(expected)
    for jid, (tid, entry) in expected.items():
        job = jobs[jid]
        assert (job.job_class, job.queue, job.tid) == ("SleepJob", "default", tid)
        assert job.run_at == entry["run_at"]  # integer epoch seconds in every version
        assert job.runtime_s == pytest.approx(capture["captured_at"] - entry["run_at"])
        assert 0 <= job.runtime_s < 12  # read at the first beat after the start (10 s on 7+)
        assert job.args == entry["payload__parsed"]["args"]
        assert job.machine == "vm" and job.identity == identity


@pytest.mark.parametrize("version", VERSIONS)
def test_job_timestamps_are_seconds_whatever_the_version_wrote(version: str) -> None:
    capture = load(version, "busy")
    (proc,) = snapshot_of(capture).processes
    stored = capture["keys"][capture["identity"] + WORK_KEY[version]]["parsed"]
    raw_enqueued = {
        e["payload__parsed"]["jid"]: e["payload__parsed"]["enqueued_at"] for e in stored.values()
    }
    assert proc.work is not None
    for job in proc.work.jobs:
        assert job.enqueued_at is not None and job.run_at is not None
        # 8.x writes integer milliseconds (1795675475506); 6.x/7.x float seconds.
        if version == "8.1.7":
            assert isinstance(raw_enqueued[job.jid], int)
            assert job.enqueued_at == raw_enqueued[job.jid] / 1000
        else:
            assert job.enqueued_at == raw_enqueued[job.jid]
        assert abs(job.run_at - job.enqueued_at) < 5  # same instant, same unit


@pytest.mark.parametrize("version", VERSIONS)
def test_idle_scenarios_have_no_jobs(version: str) -> None:
    for scenario in ("idle", "with-scheduled"):
        (proc,) = snapshot_of(load(version, scenario)).processes
        assert proc.work is not None and proc.work.entries == 0, scenario


def test_only_the_key_of_the_process_version_is_read() -> None:
    """7.3.10 writes :work; a stray :workers hash (a 6.4.1 left over) is not its jobs."""
    capture = load("7.3.10", "busy")
    identity = capture["identity"]
    stray = dict(capture["keys"][identity + ":work"]["value"])
    row = dataclasses.replace(raw_row(capture), work={":workers": stray, ":work": {}})
    (proc,) = decode_snapshot(RawSnapshot("r", capture["captured_at"], (row,))).processes
    assert proc.work is not None and proc.work.entries == 0


def test_an_inferred_version_reads_both_names() -> None:
    """6.4.1 writes no version: inferred as 6.2-7.0.1, which straddles the 6.4.2 rename."""
    (proc,) = snapshot_of(load("6.4.1", "busy")).processes
    assert proc.version is not None and proc.version.inferred
    assert proc.work is not None and proc.work.entries == 2


def test_work_suffixes_per_version() -> None:
    assert work_suffixes("6.4.1", False) == (":workers",)
    assert work_suffixes("6.4.2", False) == (":work",)
    assert work_suffixes("8.1.7", False) == (":work",)
    assert work_suffixes("5.2-6.1.2", True) == (":workers",)  # no rss: before 6.1.3
    assert set(work_suffixes("6.2-7.0.1", True)) == {":workers", ":work"}  # straddles 6.4.2
    assert set(work_suffixes(None, False)) == {":workers", ":work"}


ENTRY = {
    "queue": "default",
    "payload": json.dumps({"class": "HardJob", "jid": "j1", "args": [1], "queue": "default"}),
    "run_at": 1_000,
}


def test_payload_object_up_to_6_0_1_and_string_from_6_0_2() -> None:
    as_object = dict(ENTRY, payload=json.loads(str(ENTRY["payload"])))
    for entry in (ENTRY, as_object):
        read = decode_work("h:1:n", "h", {"t1": json.dumps(entry)}, now=1_030.0, units=None)
        (job,) = read.jobs
        assert (job.job_class, job.jid, job.runtime_s, job.args) == ("HardJob", "j1", 30.0, [1])


def test_activejob_shows_the_wrapped_class() -> None:
    payload = {"class": "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper", "wrapped": "Mailer"}
    entry = dict(ENTRY, payload=json.dumps(payload))
    (job,) = decode_work("h:1:n", "h", {"t": json.dumps(entry)}, now=1_000.0, units=None).jobs
    assert job.job_class == "Mailer"


def test_malformed_entries_are_reported_skipped_and_still_counted() -> None:
    entries = {
        "ok": json.dumps(ENTRY),
        "notjson": "{oops",
        "array": "[1, 2]",
        "badpayload": json.dumps(dict(ENTRY, payload="{not json")),
        "noclass": json.dumps(dict(ENTRY, payload=json.dumps({"jid": "x"}))),
        "numberpayload": json.dumps(dict(ENTRY, payload=7)),
    }
    read = decode_work("h:1:n", "h", entries, now=1_010.0, units=None)
    assert [j.tid for j in read.jobs] == ["ok"]
    assert read.entries == 6  # a drain never passes over a thread it could not read
    assert len(read.problems) == 5
    joined = "\n".join(read.problems)
    for tid in ("notjson", "array", "badpayload", "noclass", "numberpayload"):
        assert f"thread {tid}:" in joined
    assert "entry is not valid JSON" in joined and "payload is not valid JSON" in joined


def test_run_at_missing_or_in_milliseconds() -> None:
    no_run_at = {k: v for k, v in ENTRY.items() if k != "run_at"}
    millis = dict(ENTRY, run_at=1_000_000)  # ms: a mislabelled unit is caught by size
    read = decode_work(
        "h:1:n",
        "h",
        {"a": json.dumps(no_run_at), "b": json.dumps(dict(millis, run_at=1_795_675_475_000))},
        now=1_795_675_480.0,
        units=None,
    )
    by_tid = {j.tid: j for j in read.jobs}
    assert by_tid["a"].runtime_s is None and by_tid["a"].run_at is None
    assert by_tid["b"].run_at == 1_795_675_475.0 and by_tid["b"].runtime_s == 5.0
    assert [j.tid for j in read.jobs] == ["b", "a"]  # unknown runtimes last


def test_epoch_units() -> None:
    assert epoch_seconds(1795675475506, JobTimeUnits.INT_MILLISECONDS) == 1795675475.506
    assert epoch_seconds(1795675475.5, JobTimeUnits.FLOAT_SECONDS) == 1795675475.5
    assert epoch_seconds(1795675475506, JobTimeUnits.FLOAT_SECONDS) == 1795675475.506
    assert epoch_seconds(True, None) is None
    assert epoch_seconds("soon", None) is None  # numeric strings (Oj) are read: job_time
    assert epoch_seconds(float("nan"), None) is None


def test_running_jobs_and_queue_view_for_the_exporter() -> None:
    capture = load("7.3.10", "busy")
    snapshot = snapshot_of(capture, time=capture["captured_at"] + 100)
    assert len(running_jobs(snapshot)) == 2
    assert running_jobs(snapshot, quiet_only=True) == ()  # the process is not quiet
    (proc,) = snapshot.processes
    quiet = dataclasses.replace(snapshot, processes=(dataclasses.replace(proc, quiet=True),))
    view = queue_jobs(quiet)
    assert set(view) == {"default"} and view["default"].running == 2
    assert view["default"].longest_s == pytest.approx(
        max(j.runtime_s or 0 for j in running_jobs(quiet))
    )
    runtimes = [j.runtime_s or 0.0 for j in running_jobs(quiet)]
    assert runtimes == sorted(runtimes, reverse=True)


def test_job_time_units() -> None:
    assert job_time(1795675490.4255874) == (1795675490.4255874, JobTimeUnits.FLOAT_SECONDS)
    assert job_time(1795675535418) == (1795675535.418, JobTimeUnits.INT_MILLISECONDS)
    assert job_time(1795675535) == (1795675535.0, JobTimeUnits.FLOAT_SECONDS)
    assert job_time("1795675535418") == (1795675535.418, JobTimeUnits.INT_MILLISECONDS)
    assert job_time("1795675490.5") == (1795675490.5, JobTimeUnits.FLOAT_SECONDS)
    bad: object
    for bad in (None, True, "soon", float("nan"), [], {}):
        assert job_time(bad) is None


def test_job_time_refuses_zero_and_negatives_and_honours_declared_milliseconds() -> None:
    assert job_time(0) is None and job_time(-5) is None
    assert job_time(1_700_000_000, JobTimeUnits.INT_MILLISECONDS) == (
        1_700_000.0,
        JobTimeUnits.INT_MILLISECONDS,
    )
