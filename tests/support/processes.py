"""The real CLI in its own process, as a deploy runs it: stdout, stderr, exit code, and
the exporter scraped over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
WAIT_LIMIT_S = 60.0
"""Upper bound for anything these helpers wait for (a failure, never a measurement)."""


def cli(
    url: str, *args: str, env: Mapping[str, str] | None = None, namespace: str = ""
) -> tuple[int, str, str]:
    """The real CLI in its own process (-v: every log line is checked too)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "QUIESCE_", "FLY_"))}
    extra = ["--namespace", namespace] if namespace else []
    done = subprocess.run(
        [sys.executable, "-m", "quiesce", "-v", "--redis-url", url, *extra, *args],
        cwd=ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=WAIT_LIMIT_S,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def scrape_exporter(
    url: str, *options: str, env: Mapping[str, str] | None = None, namespace: str = ""
) -> tuple[str, str, str]:
    """``quiesce exporter`` as deployed: (the /metrics body, /healthz, its stderr logs)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "QUIESCE_", "FLY_"))}
    port = free_port()
    extra = ["--namespace", namespace] if namespace else []
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "quiesce",
            "-v",
            "-r",
            url,
            *extra,
            *options,
            "exporter",
            "--listen",
            f"127.0.0.1:{port}",
        ],
        cwd=ROOT,
        env={**base, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + WAIT_LIMIT_S
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                    body = r.read().decode()
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the exporter did not serve: {proc.communicate()}")
                time.sleep(0.05)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
                health = f"{r.status} {r.read().decode()}"
        except urllib.error.HTTPError as exc:
            health = f"{exc.code} {exc.read().decode()}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=WAIT_LIMIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    return body, health, err


FLY_TOML = """\
app = "acl-app"
kill_signal = "SIGTERM"
kill_timeout = 60

[deploy]
  release_command = "quiesce quiet --timeout 60s"
  release_command_timeout = "5m"

[processes]
  worker = "bundle exec sidekiq -t 25"
"""
