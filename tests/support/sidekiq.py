"""A real Sidekiq (Debian's ruby-sidekiq 6.4.1) for interop tests: boot, enqueue, kill.

The same harness as tests/test_interop_sidekiq.py, here so that tests in tests/interop/
need not import a test module. A missing ``sidekiq`` or ``ruby`` fails the test: CI must
prove the interop ran.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis

APP = Path(__file__).resolve().parents[1] / "interop" / "app.rb"
BEAT_S = 5.0
"""Sidekiq 6.4.1's ``BEAT_PAUSE``."""
BOOT_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 30.0
RUBY_TIMEOUT_S = 30.0

T = TypeVar("T")


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"'{name}' is not on PATH: the Sidekiq interop tests need Debian's ruby-sidekiq "
            "(bin/test installs it). Refusing to skip: CI must prove the interop ran.",
            pytrace=False,
        )
    return path


def ruby_env(redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "RUBY", "BUNDLE"))}
    env["REDIS_URL"] = redis_url
    env.pop("DYNO", None)
    return env


def text(value: object) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, log: Path) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
            pytest.fail(f"timed out after {timeout_s:g}s waiting for {what}\n{tail}")
        time.sleep(0.1)


class Sidekiq:
    """``sidekiq -r tests/interop/app.rb -c 2 -q default -t 10`` on ``redis_url``."""

    def __init__(self, redis_url: str, log_dir: Path) -> None:
        self.ruby = require_binary("ruby")
        self.redis_url = redis_url
        self.log = log_dir / "sidekiq.log"
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            [require_binary("sidekiq"), "-r", str(APP), "-c", "2", "-q", "default", "-t", "10"],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=ruby_env(redis_url),
            cwd=log_dir,
        )

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def enqueue(self, ruby_code: str) -> str:
        done = subprocess.run(
            [self.ruby, "-r", str(APP), "-e", ruby_code],
            capture_output=True,
            text=True,
            env=ruby_env(self.redis_url),
            timeout=RUBY_TIMEOUT_S,
            check=False,
        )
        assert done.returncode == 0, f"enqueue failed: {done.stderr}"
        return done.stdout.strip()

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            self._log_file.close()


def registered(raw: redis.Redis, pid: int) -> str | None:
    for member in raw.smembers("processes"):
        identity = text(member)
        assert identity is not None
        info = text(raw.hget(identity, "info"))
        if info is not None and json.loads(info).get("pid") == pid:
            return identity
    return None


@contextlib.contextmanager
def running_sidekiq(redis_url: str, raw: redis.Redis) -> Iterator[tuple[Sidekiq, str]]:
    """A booted, registered Sidekiq and its identity; stopped (or reaped) afterwards."""
    log_dir = Path(tempfile.mkdtemp(prefix="quiesce-sidekiq-"))
    sidekiq = Sidekiq(redis_url, log_dir)
    try:
        identity = wait_for(
            "Sidekiq to register in 'processes'",
            lambda: registered(raw, sidekiq.proc.pid) if sidekiq.proc.poll() is None else "exited",
            BOOT_TIMEOUT_S,
            sidekiq.log,
        )
        assert identity != "exited", sidekiq.tail()
        yield sidekiq, identity
    finally:
        sidekiq.stop()
        shutil.rmtree(log_dir, ignore_errors=True)


def quiesce(redis_url: str, *args: str, timeout_s: float = 90.0) -> subprocess.Popen[str]:
    """``python -m quiesce --redis-url <url> <args>``, started (not waited for)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "QUIESCE_"))}
    return subprocess.Popen(
        [sys.executable, "-m", "quiesce", "--redis-url", redis_url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
