"""``rejoin --wait`` interrupted (Ctrl-C, or Fly's TERM) prints its report and exits 130
(issue 16: it printed only "interrupted")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from quiesce.sim.simulator import make_processes
from tests.support import simulated_fleet
from tests.support.cli import run


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_wait_prints_the_report_and_exits_130(redis_url: str, signum: int) -> None:
    procs = make_processes(2, version="7.3.10", seed=12)
    fleet = simulated_fleet(redis_url, procs, beat_interval_s=0.3)
    with fleet:
        code, out, err = run("quiet", "-r", redis_url, "--timeout", "10")
        assert code == 0, out + err
        # Nobody comes back: the wait would last its whole --timeout.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("QUIESCE_", "REDIS_"))}
        proc = subprocess.Popen(
            [sys.executable, "-m", "quiesce", "rejoin", "-r", redis_url, "--wait",
             "--timeout", "10m", "--interval", "0.2", "--no-fly"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        try:
            assert proc.stderr is not None
            deadline = time.monotonic() + 60
            seen = ""
            while "not back" not in seen and "back" not in seen:  # the progress line
                assert time.monotonic() < deadline, seen
                seen += proc.stderr.readline()
            proc.send_signal(signum)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 130, out + err
    assert "interrupted after" in out and "deadline not reached" in out, out
    assert "Traceback" not in err
    # The report itself: the per-group count and the Machines not back.
    assert "back" in out
