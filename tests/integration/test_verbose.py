"""``-v`` says what a person debugging a deploy wants (issue 16: it logged nothing on
success): the server, every round trip, the decision per process; never a secret."""

from __future__ import annotations

import os
import subprocess
import sys

from quiesce.sim.simulator import make_processes
from tests.support import RedisServer, simulated_fleet

PASSWORD = "s3cret-Pa55word"


def test_verbose_quiet_logs_servers_round_trips_and_decisions_without_secrets() -> None:
    with RedisServer("--requirepass", PASSWORD) as server:
        url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
        procs = make_processes(2, version="7.3.10", seed=8)
        fleet = simulated_fleet(url, procs, beat_interval_s=0.3)
        with fleet:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("QUIESCE_", "REDIS_"))}
            env["REDIS_URL"] = url
            done = subprocess.run(
                [sys.executable, "-m", "quiesce", "-v", "quiet", "--timeout", "10"],
                capture_output=True, text=True, env=env, timeout=60,
            )  # fmt: skip
    assert done.returncode == 0, done.stderr
    err = done.stderr
    assert PASSWORD not in err + done.stdout
    assert f"127.0.0.1:{server.port}/0: 2 processes registered, run_id" in err
    assert "round trip 1: SSCAN" in err and "pipeline of" in err
    for proc in procs:
        assert f"{proc.identity}: running (Sidekiq 7.3.10" in err
        assert f"{proc.identity}: target (running)" in err
        assert f"{proc.identity}: confirmed" in err
