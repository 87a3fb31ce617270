"""The release binary leaves out httpx and prometheus-client (bin/build-binary's release
profile): the commands that need them refuse with one line naming where they are, instead
of "internal error (ModuleNotFoundError)" or a PyInstaller traceback (issue 16). Simulated
here by hiding both modules; tests/test_binary.py checks the real binary when built."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HIDE = (
    "import sys; sys.modules['httpx'] = None; sys.modules['prometheus_client'] = None; "
    "from quiesce.cli.app import main; main(sys.argv[1:])"
)


def without_extras(*args: str, token: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUIESCE_", "REDIS_", "FLY_"))}
    if token:
        env["FLY_API_TOKEN"] = "fo1_not-a-real-token"
        env["FLY_APP_NAME"] = "my-app"
    return subprocess.run(
        [sys.executable, "-c", HIDE, *args], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.mark.parametrize(
    ("args", "needs"),
    [(("exporter",), "quiesce exporter needs prometheus_client"),
     (("rejoin",), "the Fly Machines API needs httpx")],
)  # fmt: skip
def test_commands_needing_left_out_modules_refuse_in_one_line(
    redis_url: str, args: tuple[str, ...], needs: str
) -> None:
    done = without_extras(*args, "-r", redis_url, token=True)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"quiesce: error: {needs}"), done.stderr
    assert "quiesce image" in lines[0] and "docs/install.md" in lines[0]
    assert "fo1_not-a-real-token" not in done.stderr + done.stdout


def test_rejoin_without_a_token_still_works_from_heartbeats(redis_url: str) -> None:
    done = without_extras("rejoin", "-r", redis_url, token=False)
    # No deploy record in this empty Redis: a usage error about that, not about httpx.
    assert done.returncode == 2
    assert "no quiesce deploy record" in done.stderr and "httpx" not in done.stderr


def test_the_release_command_goes_on_without_the_fly_client(redis_url: str) -> None:
    """The signal matters more than what Fly would add to the record: quiet in the
    release binary, with a token set, says Fly's view was not recorded and exits 0."""
    done = without_extras("-r", redis_url, "quiet", "--timeout", "5s", token=True)
    assert done.returncode == 0, done.stderr
    assert "no Fly API client" in done.stdout + done.stderr
    assert "fo1_not-a-real-token" not in done.stderr + done.stdout
