"""Tables fit the terminal (issue 16): ``COLUMNS=60`` through a pty, as an operator's
narrow terminal sees it; the version column holds ``~6.2-7.0.1`` whole, and two Fly
releases' labels stay apart."""

from __future__ import annotations

import dataclasses
import os
import pty
import subprocess
import sys
import time

from quiesce.sim.simulator import make_processes
from quiesce.views.table import Column, fit, middle
from tests.support import simulated_fleet


def _through_a_pty(args: list[str], columns: int) -> str:
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUIESCE_", "REDIS_"))}
    env["COLUMNS"] = str(columns)
    proc = subprocess.Popen(
        [sys.executable, "-m", "quiesce", *args],
        stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env,
    )  # fmt: skip
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(leader)
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_status_at_60_columns(redis_url: str) -> None:
    procs = make_processes(2, version="6.4.1", seed=3)
    procs += [
        dataclasses.replace(p, labels=(f"release:registry.fly.io/app:deployment-01HAB{i}XYZ",))
        for i, p in enumerate(make_processes(2, version="8.1.7", seed=5))
    ]
    sim = simulated_fleet(redis_url, procs)
    sim.beat(procs, time.time())
    sim.client.close()
    out = _through_a_pty(["status", "-r", redis_url], 60)
    table = [line for line in out.splitlines() if line.startswith("  ")]
    assert table, out
    assert all(len(line) <= 60 for line in table), "\n".join(table)
    assert "~6.2-7.0.1" in out  # the inferred version whole, not cut by its column
    assert "01HAB0XYZ" in out and "01HAB1XYZ" in out  # each release's own tag shows
    wide = _through_a_pty(["status", "-r", redis_url], 200)
    assert "RSS" in wide and "SIGNALS" in wide  # dropped only when they do not fit


def test_middle_cut_keeps_the_distinguishing_end() -> None:
    label = "release:registry.fly.io/my-app:deployment-01HXYZABCDEF"
    assert middle(label, 20).endswith("01HXYZABCDEF") and len(middle(label, 20)) == 20
    assert middle("short", 20) == "short"
    lines = fit([Column("A", flex=True), Column("B", drop=1)], [["x" * 50, "y" * 30]], 40)
    assert all(len(line) <= 40 for line in lines)


def test_status_jobs_at_60_columns(redis_url: str) -> None:
    (proc,) = make_processes(1, version="7.3.10", seed=6)
    proc.start_job(600, job_class="Reports::QuarterlyRevenueReconciliationExportJob", queue="q")
    sim = simulated_fleet(redis_url, [proc])
    sim.beat([proc], time.time())
    sim.client.close()
    out = _through_a_pty(["status", "--jobs", "-r", redis_url], 60)
    rows = [line for line in out.splitlines() if line.startswith("    ")]
    assert any("RUNTIME" in line for line in rows), out
    assert all(len(line) <= 60 for line in rows), "\n".join(rows)
    assert "ReconciliationExportJob" in out  # the class's end, where class names differ
