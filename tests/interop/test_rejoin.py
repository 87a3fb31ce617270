"""Rejoin against a real Sidekiq 6.4.1 (Debian's ruby-sidekiq) posing as a Fly Machine.

Sidekiq uses ``DYNO`` as its hostname, so ``DYNO=<fake machine id>`` makes it report the
Machine id as Fly's hostname does. The process is quieted by ``quiesce quiet``, stopped
(TERM, as flyctl's update stops a Machine), and a new one is started with the same
``DYNO`` while ``quiesce rejoin --wait`` runs: it reports that Machine rejoined.
Uses the helpers of tests/interop/test_sidekiq.py (a missing binary fails, never skips).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest
import redis

from quiesce.errors import ExitCode
from tests.support import sidekiq as interop
from tests.support.sidekiq import (
    Sidekiq,
    boot_sidekiq,
    run_quiesce,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]

MACHINE = "3d8d413b29d089"


@pytest.fixture
def as_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Sidekiq this test starts runs with ``DYNO=<MACHINE>``."""
    plain = interop.ruby_env
    monkeypatch.setattr(interop, "ruby_env", lambda url: {**plain(url), "DYNO": MACHINE})


def _rejoin_json(redis_url: str) -> tuple[int, dict[str, object]]:
    done = run_quiesce(redis_url, "rejoin", "--json")
    return done.returncode, json.loads(done.stdout)


def _machine_state(report: dict[str, object]) -> str:
    machines = report["machines"]
    assert isinstance(machines, list)
    (row,) = [m for m in machines if m["machine"] == MACHINE]
    return str(row["state"])


def test_real_sidekiq_quieted_stopped_restarted_is_reported_rejoined(
    as_machine: None,
    start_sidekiq: Callable[..., Sidekiq],
    raw: redis.Redis,
    redis_url: str,
) -> None:
    old, old_identity = boot_sidekiq(start_sidekiq, raw)
    assert old_identity.startswith(f"{MACHINE}:"), old_identity

    done = run_quiesce(redis_url, "quiet", "--until", "quiet", "--strategy", "immediate")
    assert done.returncode == 0, done.stdout + done.stderr

    code, report = _rejoin_json(redis_url)
    assert code == ExitCode.NOT_WHOLE
    assert _machine_state(report) == "quiet-idle"

    waiting = interop.spawn_quiesce(
        redis_url, "rejoin", "--wait", "--timeout", "120s", "--interval", "0.5"
    )
    try:
        old.stop()  # TERM: Sidekiq finishes, clears its heartbeat and exits
        assert old.proc.returncode == 0, old.tail()
        _, new_identity = boot_sidekiq(start_sidekiq, raw)
        assert new_identity.startswith(f"{MACHINE}:") and new_identity != old_identity
        out, err = waiting.communicate(timeout=interop.QUIESCE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail("rejoin --wait did not see the new process")
    finally:
        interop.kill_quiesce(waiting)
    assert waiting.returncode == 0, out + err
    assert "1 of 1 expected Machine back" in out and "fleet whole" in out

    code, report = _rejoin_json(redis_url)
    assert code == 0
    assert _machine_state(report) == "rejoined"
    assert report["longest_pause_machine"] == MACHINE
