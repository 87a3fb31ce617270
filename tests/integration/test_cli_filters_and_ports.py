"""Filters in both directions on every command that takes them, and a metrics port in use
(issue 16: status had --exclude-hostname but no --hostname; demo's taken port was an
internal error)."""

from __future__ import annotations

import json
import socket
import time

from quiesce.sim.simulator import make_processes
from tests.support import simulated_fleet
from tests.support.cli import one_line_error, run


def test_status_takes_inclusion_filters_too(redis_url: str) -> None:
    procs = make_processes(4, per_machine=2, version="7.3.10", seed=4)
    sim = simulated_fleet(redis_url, procs)
    sim.beat(procs, time.time())
    sim.client.close()
    first = procs[0].hostname
    code, out, err = run("status", "-r", redis_url, "--hostname", first, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert [m["machine"] for m in data["machines"]] == [first]
    code, out, _ = run("status", "-r", redis_url, "--exclude-hostname", first, "--json")
    assert first not in [m["machine"] for m in json.loads(out)["machines"]]
    code, out, _ = run("status", "-r", redis_url, "--hostname", first)
    assert "excluded by filters: 2" in out


def test_rejoin_and_recover_take_exclusions() -> None:
    for command in ("rejoin", "recover"):
        _, out, _ = run(command, "--help")
        assert "--exclude-hostname" in out and "--exclude-tag" in out, command
        assert "--hostname" in out and "--tag" in out, command
    _, out, _ = run("status", "--help")
    for option in ("--hostname", "--tag", "--label", "--queue", "--identity"):
        assert option in out


def test_demo_with_its_metrics_port_taken_is_one_line_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run("demo", "--machines", "2", "--metrics-port", str(port))
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in one_line_error(err)
