"""``quiet --until drained`` against a real Sidekiq: Debian's ruby-sidekiq 6.4.1 (the
``:workers`` hash, payload as a JSON string, 5 s beat), started by the test on the session's
private Redis, running ``SleepJob`` (tests/interop/app.rb: sleeps, then INCRs
``sample:slept``, the job's own proof that it finished).

Like tests/interop/test_sidekiq.py, a missing ``sidekiq`` binary fails the test: CI must
prove the interop ran.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest
import redis

from tests.support.sidekiq import (
    BEAT_S,
    Sidekiq,
    as_text,
    boot_sidekiq,
    hash_field,
    run_quiesce,
    wait_for,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]

SHORT_JOB_S = 16
"""Still running when TSTP is popped: busy=1 is seen <= 5 s after the job starts (one beat),
the push follows, and the next beat pops it <= 5 s later."""
LONG_JOB_S = 40
DRAIN_TIMEOUT_S = 45
SHORT_TIMEOUT_S = 12


def _running(sidekiq: Sidekiq, raw: redis.Redis, identity: str, seconds: int) -> str:
    jid = sidekiq.enqueue(f"puts SleepJob.perform_async({seconds})")
    wait_for(
        "busy=1 and the job in <identity>:workers",
        lambda: (
            True
            if hash_field(raw, identity, "busy") == "1" and raw.hlen(f"{identity}:workers") == 1
            else None
        ),
        BEAT_S * 3,
        sidekiq.log,
    )
    return jid


def test_until_drained_returns_only_after_the_job_finished(
    start_sidekiq: Callable[..., Sidekiq],
    raw: redis.Redis,
    redis_url: str,
) -> None:
    sidekiq, identity = boot_sidekiq(start_sidekiq, raw)
    jid = _running(sidekiq, raw, identity, SHORT_JOB_S)
    assert raw.get("sample:slept") is None

    result = run_quiesce(
        redis_url, "quiet", "--until", "drained", "--timeout", str(DRAIN_TIMEOUT_S), "--json"
    )
    # Read before anything else: the job's own record that it finished.
    slept = as_text(raw.get("sample:slept"))
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{sidekiq.tail()}"
    assert slept == "1", f"quiesce returned before SleepJob finished\n{sidekiq.tail()}"
    report = json.loads(result.stdout)
    (entry,) = report["processes"]
    assert (entry["identity"], entry["outcome"]) == (identity, "drained"), report
    assert report["until"] == "drained" and report["ok"] is True
    log = sidekiq.log_text()
    assert log.index("Received TSTP") < log.index(f"class=SleepJob jid={jid} elapsed=")
    assert hash_field(raw, identity, "busy") == "0" and raw.hlen(f"{identity}:workers") == 0


def test_a_job_longer_than_the_timeout_exits_3_with_class_and_runtime(
    start_sidekiq: Callable[..., Sidekiq],
    raw: redis.Redis,
    redis_url: str,
) -> None:
    sidekiq, identity = boot_sidekiq(start_sidekiq, raw)
    jid = _running(sidekiq, raw, identity, LONG_JOB_S)

    result = run_quiesce(
        redis_url,
        "quiet", "--until", "drained", "--timeout", str(SHORT_TIMEOUT_S), "--kill-timeout", "5",
    )  # fmt: skip
    assert result.returncode == 3, f"{result.stdout}\n{result.stderr}\n{sidekiq.tail()}"
    out = result.stdout
    assert f"STILL_BUSY     {identity}" in out, out
    job_line = next(line for line in out.splitlines() if jid in line and "SleepJob" in line)
    runtime = re.search(r"\b(\d+)s\s+SleepJob", job_line)
    assert runtime is not None, job_line
    assert SHORT_TIMEOUT_S - 2 <= int(runtime.group(1)) < LONG_JOB_S, job_line
    assert "outcomes: 1 still_busy" in out
    assert "killed mid-run" in out and "kill_timeout" in out
    assert raw.get("sample:slept") is None  # the job is indeed still running
    assert hash_field(raw, identity, "quiet") == "true"
