"""The release-command binary (bin/build-binary): it runs with no Python on PATH, prints its
version, and quiets simulated processes in the test Redis. CI builds it first (.ci/run);
elsewhere these tests are skipped unless dist/quiesce exists (or $QUIESCE_BINARY names one)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quiesce import __version__
from quiesce.sim.simulator import make_processes
from tests.support import simulated_fleet

ROOT = Path(__file__).resolve().parents[2]


def _binary() -> Path | None:
    named = os.environ.get("QUIESCE_BINARY")
    for path in [Path(named)] if named else [ROOT / "dist/quiesce", ROOT / "dist/quiesce/quiesce"]:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


BINARY = _binary()
pytestmark = pytest.mark.skipif(
    BINARY is None,
    reason="release binary not built: run bin/build-binary (CI's .ci/run builds it first)",
)


@pytest.fixture
def bare_env(tmp_path: Path) -> dict[str, str]:
    """What a Rails image gives the release command, minus Python: nothing on PATH."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    return {"PATH": str(empty), "HOME": str(tmp_path), "TMPDIR": str(tmp_path), "LANG": "C.UTF-8"}


@pytest.fixture
def binary() -> Iterator[Path]:
    assert BINARY is not None
    yield BINARY


def run(binary: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_version_without_python_and_cold_start(
    binary: Path, bare_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    times = []
    for _ in range(5):
        start = time.perf_counter()
        done = run(binary, "--version", env=bare_env)
        times.append(time.perf_counter() - start)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"quiesce {__version__}"
    size_mb = binary.stat().st_size / 1e6
    with capsys.disabled():
        print(
            f"\nrelease binary {binary}"
            f" ({size_mb:.1f} MB): cold start (--version) first {times[0]:.3f}s, "
            f"median of the next {len(times) - 1} {statistics.median(times[1:]):.3f}s"
        )


def test_help_and_usage_errors_are_plain(binary: Path, bare_env: dict[str, str]) -> None:
    # rich is left out of the build: help and usage errors must not need it.
    done = run(binary, "quiet", "--help", env=bare_env)
    assert done.returncode == 0, done.stderr
    assert "--timeout" in done.stdout
    done = run(binary, "quiet", "--no-such-flag", env=bare_env)
    assert done.returncode == 2
    assert "no-such-flag" in done.stderr
    assert "Traceback" not in done.stderr


def test_quiet_against_the_test_redis(
    binary: Path, redis_url: str, bare_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    processes = make_processes(4, per_machine=2, seed=3)
    fleet = simulated_fleet(redis_url, processes, beat_interval_s=0.5).start()
    try:
        start = time.perf_counter()
        done = run(
            binary,
            "-r",
            redis_url,
            "quiet",
            "--release",
            "registry.fly.io/app:deployment-bin",
            "--strategy",
            "immediate",
            "--timeout",
            "30",
            "--json",
            env=bare_env,
        )
        elapsed = time.perf_counter() - start
    finally:
        fleet.stop()
    assert fleet.error is None, fleet.error
    assert done.returncode == 0, done.stdout + done.stderr

    report = json.loads(done.stdout)
    assert report["ok"] is True
    confirmed = {p["identity"] for p in report["processes"] if p["outcome"] == "confirmed"}
    assert confirmed == {p.identity for p in processes}
    with capsys.disabled():
        print(f"\nrelease binary: quiet of 4 simulated processes took {elapsed:.2f}s (0.5 s beats)")


def test_commands_it_does_not_carry_refuse_in_one_line(
    binary: Path, redis_url: str, bare_env: dict[str, str]
) -> None:
    """exporter needs prometheus-client and the Fly API needs httpx: the release build
    leaves both out, and says where they are (issue 16)."""
    token = {**bare_env, "FLY_API_TOKEN": "fo1_not-a-real-token", "FLY_APP_NAME": "app"}
    for args, needs in (
        (("exporter",), "quiesce exporter needs prometheus_client"),
        (("rejoin",), "the Fly Machines API needs httpx"),
    ):
        done = run(binary, *args, "-r", redis_url, env=token)
        # The full profile carries them: then the commands run (and fail on other grounds).
        if "needs" not in done.stderr:
            continue
        assert done.returncode == 2, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"quiesce: error: {needs}"), done.stderr
        assert "Traceback" not in done.stderr
