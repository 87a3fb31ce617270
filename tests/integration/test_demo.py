"""``quiesce demo`` end to end: its own Redis, a simulated fleet, the real quiet and rejoin.

Each run is a whole demo (about 10 s with the default dozen Machines). The runs that
must come back whole get a long ``--rejoin-timeout``: the wait ends as soon as the fleet
is whole, so the bound costs nothing and a slow CI machine does not fail them.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import types
from pathlib import Path
from typing import Any

import pytest

import quiesce.adapters
from quiesce.errors import ExitCode
from tests.support.cli import run

LIMIT_S = 120.0
"""Upper bound for one demo run (a failure, never a measurement)."""


def _demo(*args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "QUIESCE_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "quiesce", "demo", *args],
        capture_output=True,
        text=True,
        timeout=LIMIT_S,
        env=env,
    )
    return proc.returncode, proc.stdout + proc.stderr


def _port(out: str) -> int:
    found = re.search(r"^Redis: \S+(?: [\d.]+)? on 127\.0\.0\.1:(\d+) ", out, re.M)
    assert found, out
    return int(found.group(1))


def _nothing_left_on(port: int) -> None:
    """The demo's Redis is gone: nothing answers on its port, no process names it."""
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, f"something still listens on {port}"
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        assert f"127.0.0.1:{port}" not in text and f"--port {port} " not in text, text


def test_demo_immediate_comes_back_whole() -> None:
    code, out = _demo("--rejoin-timeout", "2m")
    assert code == 0, out
    assert "redis-server on 127.0.0.1:" in out
    assert "signalled TSTP to 12 processes on 12 machines" in out
    assert "outcomes: 12 confirmed" in out
    assert "strategy immediate" in out
    assert "12 of 12 expected Machines back; 12 rejoined" in out
    assert re.search(r"longest pause \d+s \([0-9a-f]{14}\)", out), out
    assert out.count("new process pid") == 12
    assert "fleet whole" in out and "NOT whole" not in out
    assert "cleaned up:" in out
    _nothing_left_on(_port(out))


def test_demo_bluegreen_on_fakeredis_whole_and_leaves_no_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In-process, so the threads can be counted; fakeredis's TCP server as the Redis,
    and a stand-in exporter behind the metrics hook."""
    served: list[dict[str, Any]] = []

    class Handle:
        url = "http://127.0.0.1:1/metrics"
        closed = False

        def close(self) -> None:
            self.closed = True

    handle = Handle()

    def serve_in_background(settings: Any, *, host: str, port: int) -> Handle:
        served.append({"urls": [t.url for t in settings.redis], "host": host, "port": port})
        return handle

    exporter = types.ModuleType("quiesce.adapters.prometheus")
    exporter.serve_in_background = serve_in_background  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "quiesce.adapters.prometheus", exporter)
    # `from quiesce.adapters import prometheus` finds the package attribute first, once imported.
    monkeypatch.setattr(quiesce.adapters, "prometheus", exporter, raising=False)
    before = set(threading.enumerate())
    previous = signal.getsignal(signal.SIGTERM)
    try:
        code, out, err = run(
            "demo", "--strategy", "bluegreen", "--redis", "fakeredis", "--rejoin-timeout", "2m"
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 0, out + err
    assert "fakeredis" in out and "strategy bluegreen" in out
    assert out.count("green Machines beside") == 1 and out.count("process pid") == 12
    assert "12 of 12 expected Machines back" in out and "12 new" in out
    assert "blue Machines destroyed" in out
    assert "fleet whole" in out
    assert served and served[0]["host"] == "127.0.0.1" and served[0]["port"] > 0
    assert served[0]["urls"][0].startswith("redis://127.0.0.1:")
    assert f"metrics were served at {Handle.url}" in out and handle.closed
    left = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not left, left
    _nothing_left_on(_port(out))


def test_demo_with_a_failed_machine_names_it_missing_and_exits_7() -> None:
    code, out = _demo("--machines", "4", "--fail-machine", "2", "--rejoin-timeout", "8s")
    assert code == ExitCode.NOT_WHOLE, out
    found = re.search(r"injected failure: Machine ([0-9a-f]{14}) \(#2\)", out)
    assert found, out
    machine = found.group(1)
    assert re.search(rf"^  {machine}\s+demo\s+missing\b", out, re.M), out
    assert "fleet NOT whole" in out
    _nothing_left_on(_port(out))


def test_demo_stopped_by_term_cleans_up() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "quiesce", "demo", "--rejoin-timeout", "2m"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines = [proc.stdout.readline()]
    port = _port(lines[0])
    while "== deploy" not in lines[-1]:
        lines.append(proc.stdout.readline())
        assert lines[-1], "".join(lines)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=LIMIT_S)
    assert proc.returncode == ExitCode.INTERRUPTED, "".join(lines) + rest
    assert "quiesce: interrupted" in rest
    _nothing_left_on(port)


def test_demo_refuses_a_fail_machine_beyond_the_fleet() -> None:
    code, _, err = run("demo", "--machines", "3", "--fail-machine", "4")
    assert code == ExitCode.USAGE
    assert "--fail-machine 4: there are 3 Machines" in err


def test_demo_stopped_by_term_during_the_rejoin_wait_exits_130() -> None:
    """The rejoin watch keeps its report when interrupted (``rejoin --wait`` prints it);
    the demo must still stop as interrupted, not judge the fleet "NOT whole"."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "quiesce", "demo", "--rejoin-timeout", "2m", "--fail-machine", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines = [proc.stdout.readline()]
    port = _port(lines[0])
    while not lines[-1].startswith("rejoin: "):  # the wait has begun
        lines.append(proc.stdout.readline())
        assert lines[-1], "".join(lines)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=LIMIT_S)
    assert proc.returncode == ExitCode.INTERRUPTED, "".join(lines) + rest
    assert "quiesce: interrupted" in rest
    assert "NOT whole" not in rest
    _nothing_left_on(port)
