"""quiesce against a real Sidekiq: Debian's ruby-sidekiq 6.4.1 on the session's private Redis.

One process (``sidekiq -r tests/interop/app.rb -c 2 -q default``), booted without Rails
(Sidekiq 6 requires the ``-r`` file itself when it is not a directory). Jobs are enqueued
with Sidekiq's own client (``ruby -r app.rb -e 'SleepJob.perform_async(12)'``), so the job
JSON is real. The test proves, on the wire and in Sidekiq's log, that ``quiesce quiet``
quiets the process: it took TSTP, finished the job it was running, and leaves new jobs
in the queue while it keeps beating.

Sidekiq 6.4.1 beats every 5 s and pops at most one signal per beat; it reports
``quiet = "true"`` on the beat after the one that popped TSTP, so confirmation takes 5 to
10 s after the push. SleepJob sleeps 12 s so that it is still running when the signal
arrives: ``busy = 1`` is seen at most 5 s after the job started, and the signal is popped
one beat (5 s) after the push.

If ``sidekiq`` or ``ruby`` is missing the test fails, it does not skip: bin/test
installs them and CI must prove the interop really ran.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tests.support import RedisServer, crash, restart, run_id
from tests.support.sidekiq import (
    BEAT_S,
    MARK_TTL_S,
    RELEASE,
    SLEEP_S,
    STOP_TIMEOUT_S,
    Sidekiq,
    as_text,
    boot_sidekiq,
    find_process,
    finish_quiesce,
    hash_field,
    kill_quiesce,
    next_beat,
    redis_time,
    ruby_mark_stamps,
    run_quiesce,
    spawn_quiesce,
    wait_for,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]


def test_quiesce_quiets_a_real_sidekiq(
    start_sidekiq: Callable[..., Sidekiq], raw: redis.Redis, redis_url: str
) -> None:
    # 1. Sidekiq boots and registers.
    sidekiq, identity = boot_sidekiq(start_sidekiq, raw)
    assert hash_field(raw, identity, "quiet") == "false"
    assert "Booting Sidekiq 6.4.1" in sidekiq.log_text(), sidekiq.tail()

    # 2. A long job starts; the next beat reports it busy.
    jid = sidekiq.enqueue(f"puts SleepJob.perform_async({SLEEP_S})")
    assert len(jid) == 24, f"not a jid: {jid!r}"
    wait_for(
        "busy=1 in the process hash",
        lambda: True if hash_field(raw, identity, "busy") == "1" else None,
        BEAT_S * 3,
        sidekiq.log,
    )
    assert f"class=SleepJob jid={jid} INFO: start" in sidekiq.log_text(), sidekiq.tail()

    # 3. quiesce pushes TSTP and waits until the hash says quiet.
    before = redis_time(raw)
    result = run_quiesce(redis_url, "quiet", "--until", "quiet", "--json", "--release", RELEASE)
    after = redis_time(raw)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{sidekiq.tail()}"
    report = json.loads(result.stdout)
    entries = {p["identity"]: p for p in report["processes"]}
    assert set(entries) == {identity}, report
    assert entries[identity]["outcome"] == "confirmed", report
    assert entries[identity]["pushes"] == 1, report
    assert report["ok"] is True and report["exit_code"] == 0, report
    assert report["release"] == RELEASE, report
    # Popped on the next beat, reported quiet on the one after: at most two beats (+ slack).
    assert after - before < 2 * BEAT_S + 3, f"quiet took {after - before:.1f}s"
    log = sidekiq.log_text()
    assert "Received TSTP, no longer accepting new work" in log, sidekiq.tail()
    assert hash_field(raw, identity, "quiet") == "true"
    assert raw.llen(f"{identity}-signals") == 0  # the push was consumed, nothing left over

    # 4. A job enqueued after quiet stays queued; the job running at quiet time finishes.
    sidekiq.enqueue("RecordJob.perform_async")
    beat = hash_field(raw, identity, "beat")
    for n in (1, 2):
        beat = next_beat(raw, identity, beat, sidekiq.log, n)
    wait_for(
        "the SleepJob running at quiet time to finish",
        lambda: as_text(raw.get("sample:slept")),
        SLEEP_S,
        sidekiq.log,
    )
    assert as_text(raw.get("sample:slept")) == "1"
    assert raw.llen("queue:default") == 1, sidekiq.tail()
    queued = json.loads(as_text(raw.lindex("queue:default", 0)) or "{}")
    assert queued["class"] == "RecordJob" and queued["queue"] == "default", queued
    assert raw.get("sample:ran") is None, sidekiq.tail()
    assert sidekiq.proc.poll() is None, f"sidekiq exited\n{sidekiq.tail()}"
    assert hash_field(raw, identity, "quiet") == "true"
    log = sidekiq.log_text()
    tstp_at = log.index("Received TSTP")
    done_at = log.find(f"class=SleepJob jid={jid} elapsed=")
    assert done_at != -1, f"no 'done' line for SleepJob {jid}\n{sidekiq.tail()}"
    assert tstp_at < done_at, f"SleepJob was not running when TSTP arrived\n{sidekiq.tail()}"
    assert "class=RecordJob" not in log, sidekiq.tail()

    status_run = run_quiesce(redis_url, "status", "--json")
    assert status_run.returncode == 0, f"{status_run.stdout}\n{status_run.stderr}"
    status = json.loads(status_run.stdout)
    proc = find_process(status, identity)
    assert proc["state"] == "quiet", proc
    assert proc["quiet"] is True, proc
    assert status["summary"]["quiet"] == 1, status["summary"]

    # 5. The deploy mark, byte for byte what Sidekiq::Deploy#mark writes.
    expected = ruby_mark_stamps(sidekiq.ruby, before, after)
    marks = sorted(k for k in (as_text(key) for key in raw.keys("*-marks")) if k)
    assert len(marks) == 1, marks
    datecode = marks[0].removesuffix("-marks")
    written = {as_text(f): as_text(v) for f, v in raw.hgetall(marks[0]).items()}
    assert len(written) == 1, written
    ((stamp, label),) = written.items()
    assert stamp is not None
    assert (datecode, stamp) in expected, (datecode, stamp, expected)
    assert label == RELEASE
    mark_ttl = raw.ttl(marks[0])
    assert isinstance(mark_ttl, int) and MARK_TTL_S - 120 <= mark_ttl <= MARK_TTL_S, mark_ttl
    assert as_text(raw.get(f"deploylock-{RELEASE}")) == stamp
    lock_ttl = raw.ttl(f"deploylock-{RELEASE}")
    assert isinstance(lock_ttl, int) and 0 < lock_ttl <= 60, lock_ttl


def test_default_until_delivered_on_a_real_sidekiq(
    start_sidekiq: Callable[..., Sidekiq], raw: redis.Redis, redis_url: str
) -> None:
    """The release command's default: confirmed when a beat after the push popped TSTP."""
    sidekiq, identity = boot_sidekiq(start_sidekiq, raw)

    before = redis_time(raw)
    result = run_quiesce(redis_url, "quiet", "--json", "--no-mark")
    after = redis_time(raw)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{sidekiq.tail()}"
    (entry,) = json.loads(result.stdout)["processes"]
    assert (entry["identity"], entry["outcome"]) == (identity, "confirmed")
    assert after - before < BEAT_S + 2, f"delivery took {after - before:.1f}s"  # one beat
    assert "Received TSTP, no longer accepting new work" in sidekiq.log_text(), sidekiq.tail()
    assert raw.llen(f"{identity}-signals") == 0

    # The process reports quiet on its next beat: `status --expect quiet` turns to exit 0.
    def quiet_now() -> bool | None:
        return (
            True if run_quiesce(redis_url, "status", "--expect", "quiet").returncode == 0 else None
        )

    wait_for("status --expect quiet to pass", quiet_now, BEAT_S + 2, sidekiq.log)


# --- Faults during the wait: a clean exit versus a Redis restart -----------------------------
#
# Both tests push TSTP right after a beat (Sidekiq pops one signal per beat, so the next pop
# is ~5 s away), then, before that pop, either stop the process (TERM) or crash Redis and
# bring it back EMPTY on the same port. If the timing slipped and Sidekiq popped the signal
# first, the scenario did not happen: the attempt is void and is run again with a fresh
# Sidekiq (at most FAULT_ATTEMPTS times).

FAULT_ATTEMPTS = 2
FAULT_QUIET_TIMEOUT_S = 40
"""quiesce's --timeout: room for a re-registration beat, a re-push, a pop and a quiet beat."""
PUSH_TIMEOUT_S = 10.0
"""quiesce's start-up, snapshot and push (one pipeline); it takes well under a second."""
TSTP_LINE = "Received TSTP, no longer accepting new work"
LATEST_DEPLOY = "quiesce:deploy:latest"
"""quiesce's deploy record, written in the pipeline that pushes the signals."""


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, because the test crashes it (never the session's)."""
    with RedisServer() as server:
        yield server


def _push_after_a_beat(
    raw: redis.Redis, sidekiq: Sidekiq, identity: str, redis_url: str
) -> subprocess.Popen[str]:
    """Starts ``quiesce quiet --until quiet`` just after a beat and returns once it pushed:
    the next beat, the one that pops the TSTP, is then ~5 s away.

    The push is seen in ``<identity>-signals``, or by quiesce's deploy record (written in
    the same pipeline) in case a slow start let a beat pop the signal between two looks.
    """
    seen = hash_field(raw, identity, "beat")
    wait_for(
        "a beat to push right after",
        lambda: True if hash_field(raw, identity, "beat") != seen else None,
        BEAT_S + 2,
        sidekiq.log,
    )
    quiesce = spawn_quiesce(
        redis_url,
        "quiet", "--until", "quiet", "--timeout", str(FAULT_QUIET_TIMEOUT_S), "--json",
        "--no-mark",
    )  # fmt: skip
    signals = f"{identity}-signals"
    try:
        deadline = time.monotonic() + PUSH_TIMEOUT_S
        while not (raw.llen(signals) or raw.exists(LATEST_DEPLOY)):
            if quiesce.poll() is not None:
                out, err = quiesce.communicate()
                pytest.fail(f"quiesce exited {quiesce.returncode} before pushing\n{out}\n{err}")
            if time.monotonic() >= deadline:
                pytest.fail(f"no TSTP in {signals} after {PUSH_TIMEOUT_S:g}s\n{sidekiq.tail()}")
            time.sleep(0.005)  # a tight loop: the fault must land well before the next beat
    except BaseException:
        kill_quiesce(quiesce)
        raise
    return quiesce


def _outcomes(stdout: str) -> dict[str, dict[str, Any]]:
    return {p["identity"]: p for p in json.loads(stdout)["processes"]}


def _quiet_within_two_beats(raw: redis.Redis, identity: str) -> bool:
    """Whether the process's own beat reports quiet = "true" within two beats (+ slack)."""
    deadline = time.monotonic() + 2 * BEAT_S + 2
    while time.monotonic() < deadline:
        if hash_field(raw, identity, "quiet") == "true":
            return True
        time.sleep(0.1)
    return hash_field(raw, identity, "quiet") == "true"


def _runs_new_jobs(raw: redis.Redis, sidekiq: Sidekiq, identity: str) -> bool:
    """Enqueues a RecordJob and lets two beats pass (the fetcher polls every 2 s at most):
    whether the process ran it. A quiet process leaves it in the queue."""
    sidekiq.enqueue("RecordJob.perform_async")
    beat = hash_field(raw, identity, "beat")
    for n in (1, 2):
        beat = next_beat(raw, identity, beat, sidekiq.log, n)
    return raw.get("sample:ran") is not None


def test_process_that_exits_cleanly_during_the_wait_is_vanished(
    start_sidekiq: Callable[..., Sidekiq], raw: redis.Redis, redis_url: str
) -> None:
    """The honest VANISHED: Sidekiq takes TERM after the push and before popping TSTP; its
    clean shutdown leaves ``processes`` (SREM), so quiesce has nothing left to quiet."""
    for _attempt in range(FAULT_ATTEMPTS):
        sidekiq, identity = boot_sidekiq(start_sidekiq, raw)
        quiesce = _push_after_a_beat(raw, sidekiq, identity, redis_url)
        try:
            sidekiq.proc.send_signal(signal.SIGTERM)
            exit_status = sidekiq.proc.wait(timeout=STOP_TIMEOUT_S)
            code, out, err = finish_quiesce(quiesce, FAULT_QUIET_TIMEOUT_S + 20)
        finally:
            kill_quiesce(quiesce)
        if TSTP_LINE in sidekiq.log_text():  # popped before TERM: not this scenario
            raw.flushall()
            continue
        break
    else:
        pytest.fail(f"Sidekiq popped TSTP before TERM in all {FAULT_ATTEMPTS} attempts")

    assert exit_status == 0, f"sidekiq exited {exit_status}\n{sidekiq.tail()}"
    assert "Bye!" in sidekiq.log_text(), sidekiq.tail()
    assert not raw.sismember("processes", identity)
    assert code == 0, f"{out}\n{err}"
    report = json.loads(out)
    entries = _outcomes(out)
    assert set(entries) == {identity}, report
    assert entries[identity]["outcome"] == "vanished", report
    assert entries[identity]["pushes"] == 1, report
    assert report["ok"] is True and report["exit_code"] == 0, report
    # LEAD: align with the fix's wording. No restart happened, so none is reported.
    assert not re.search("restart", out + err, re.IGNORECASE), f"{out}\n{err}"
    assert not report.get("redis_events"), report


def _crash_after_push(
    server: RedisServer, raw: redis.Redis, start_sidekiq: Callable[..., Sidekiq]
) -> tuple[Sidekiq, str, subprocess.Popen[str]] | None:
    """One attempt: boot Sidekiq, push right after a beat, crash Redis and bring it back
    empty, wait for Sidekiq to re-register. None (all cleaned up) if the attempt is void."""
    sidekiq, identity = boot_sidekiq(start_sidekiq, raw, server.url)
    first_run = run_id(server)
    quiesce = _push_after_a_beat(raw, sidekiq, identity, server.url)
    try:
        crash(server)
        # Void if Sidekiq popped the TSTP before the kill: it logs it within milliseconds.
        # Looked at while Redis is down, so no later push (a fixed quiesce may push again
        # after the restart) can be mistaken for it. quiesce retries a refused connection
        # for ~0.6 s, so Redis stays down far less than that.
        time.sleep(0.1)
        void = TSTP_LINE in sidekiq.log_text()
        assert restart(server) != first_run
        raw.connection_pool.disconnect()  # its sockets died with the old server
        if void:
            kill_quiesce(quiesce)
            sidekiq.stop()
            raw.flushall()
            return None
        assert not raw.exists(f"{identity}-signals")  # the TSTP went with the crash
        # Sidekiq reconnects by itself and re-registers (same identity) on its next beat.
        wait_for(
            "Sidekiq to re-register on the restarted Redis",
            lambda: True if raw.sismember("processes", identity) else None,
            BEAT_S * 2 + 2,
            sidekiq.log,
        )
    except BaseException:
        kill_quiesce(quiesce)
        raise
    return sidekiq, identity, quiesce


# Kept last on purpose: it fails on quiesce before the Redis-restart fix (the false OK) and
# the lead merges it together with that fix.
@pytest.mark.timeout(150)
def test_redis_restarting_empty_during_the_wait_is_no_false_ok(
    private_redis: RedisServer, start_sidekiq: Callable[..., Sidekiq]
) -> None:
    """Redis crashes after the push and comes back EMPTY on the same port (no persistence,
    or a failover to a replica that lost the writes): the TSTP and every process hash are
    gone. The real Sidekiq reconnects and re-registers under the same identity on its next
    beat, never having received TSTP, and keeps fetching jobs.

    The invariant: quiesce exits 0 only if the process really is quiet afterwards; if it
    is not, quiesce exits 3. Before the fix quiesce counted the emptied ``processes`` set
    as every target VANISHED and exited 0 within ~2 s: the false OK this test catches.
    """
    raw = private_redis.client(decode_responses=True)
    try:
        for _attempt in range(FAULT_ATTEMPTS):
            scenario = _crash_after_push(private_redis, raw, start_sidekiq)
            if scenario is not None:
                break
        else:
            pytest.fail(f"Sidekiq popped TSTP before the crash in all {FAULT_ATTEMPTS} attempts")
        sidekiq, identity, quiesce = scenario
        try:
            code, out, err = finish_quiesce(quiesce, FAULT_QUIET_TIMEOUT_S + 20)
        finally:
            kill_quiesce(quiesce)
        quiet = _quiet_within_two_beats(raw, identity)
        ran = _runs_new_jobs(raw, sidekiq, identity)
        assert sidekiq.proc.poll() is None, f"sidekiq exited\n{sidekiq.tail()}"
        facts = (
            f"quiesce exit {code}; process quiet afterwards: {quiet}; ran a new job: {ran}\n"
            f"--- quiesce stdout ---\n{out}\n--- quiesce stderr ---\n{err}\n{sidekiq.tail()}"
        )

        # THE invariant: exit 0 only for a process that really went quiet, else exit 3.
        if code == 0:
            assert quiet and not ran, f"false OK: quiesce exited 0, Sidekiq is not quiet\n{facts}"
        assert quiet or code == 3, facts
        assert code in (0, 3), facts

        # LEAD: align with the fix's wording. The report says Redis restarted during the wait:
        # "restart" in the output (any case; main has it in "notes" and in the stderr warning)
        # and, if the JSON has that field, a non-empty redis_events.
        assert re.search("restart", out + err, re.IGNORECASE), facts
        report = json.loads(out)
        if "redis_events" in report:
            assert report["redis_events"], facts
    finally:
        raw.close()
