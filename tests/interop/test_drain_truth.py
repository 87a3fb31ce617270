"""Drain truth against a real Sidekiq 6.4.1 (issue 16): a process killed -9 while
``quiet --until drained`` waits is reported stalled (not "still busy"), ``status`` shows it
stalled whatever its last hash said; a work key of the wrong type is a note, not a failed
signal."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import redis

from tests.support.sidekiq import BEAT_S, as_text, running_sidekiq, spawn_quiesce, wait_for

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]

DRAIN_TIMEOUT_S = 40
"""Long enough for TSTP (<= 2 beats), the kill, and the beat to be overdue (interval 10 s
for an inferred 6.x-7.0.1 version, plus the 5 s margin)."""


def _finish(proc: subprocess.Popen[str], timeout_s: float) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


def test_a_process_killed_mid_drain_is_stalled_not_still_busy(
    redis_url: str, raw: redis.Redis
) -> None:
    with running_sidekiq(redis_url, raw) as (sidekiq, identity):
        sidekiq.enqueue("SleepJob.perform_async(120); SleepJob.perform_async(120)")
        wait_for(
            "busy=2",
            lambda: True if as_text(raw.hget(identity, "busy")) == "2" else None,
            BEAT_S * 3,
            sidekiq.log,
        )
        drain = spawn_quiesce(
            redis_url, "quiet", "--until", "drained", "--timeout", str(DRAIN_TIMEOUT_S), "--json"
        )
        try:
            wait_for(
                "quiet=true (TSTP taken)",
                lambda: True if as_text(raw.hget(identity, "quiet")) == "true" else None,
                BEAT_S * 4,
                sidekiq.log,
            )
            sidekiq.kill9()
            killed = time.monotonic()
            # The hash (quiet, busy=2, two jobs listed) lingers for up to 60 s.
            wait_for(
                "the beat to be overdue",
                lambda: True if time.monotonic() - killed > 17 else None,
                30,
                sidekiq.log,
            )
            status = spawn_quiesce(redis_url, "status", "--json")
            code, out, err = _finish(status, 60)
            assert code in (0, 3), err
            states = [
                p["state"]
                for m in json.loads(out)["machines"]
                for p in m["processes"]
                if p["identity"] == identity
            ]
            assert states == ["stalled"], out
            code, out, err = _finish(drain, DRAIN_TIMEOUT_S + 30)
        finally:
            if drain.poll() is None:
                drain.kill()
                drain.communicate()
    assert code == 3, f"{out}\n{err}"
    report = json.loads(out)
    (entry,) = report["processes"]
    assert entry["outcome"] == "stalled", entry
    assert "last heartbeat" in entry["reason"] and "2 running jobs" in entry["reason"]
    assert "still_busy" not in out


def test_a_wrong_type_work_key_is_a_note_not_a_failed_signal(
    redis_url: str, raw: redis.Redis
) -> None:
    with running_sidekiq(redis_url, raw) as (sidekiq, identity):
        # 6.4.1 writes <identity>:workers and never touches :work, which quiesce also
        # reads while the version is only inferred: a stray string there.
        raw.set(f"{identity}:work", "not a hash")
        drain = spawn_quiesce(redis_url, "quiet", "--until", "drained", "--timeout", "30", "--json")
        code, out, err = _finish(drain, 60)
        assert code == 0, f"{out}\n{err}\n{sidekiq.tail()}"
        report = json.loads(out)
        (entry,) = report["processes"]
        assert entry["outcome"] == "drained", entry
        assert "WRONGTYPE" in entry["reason"] and "busy alone decides" in entry["reason"]
        assert report["quieted_machines"] == [entry["machine"]]
        assert any("work hash cannot be read" in n for n in report["notes"])
