"""Real Sidekiq processes (Debian's ruby-sidekiq 6.4.1) posing as Fly Machines: ``DYNO``
is Sidekiq's hostname, so ``DYNO=<machine id>`` makes it report a Machine id as Fly's
hostname does. For the interop tests that must not import another test module."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

APP = Path(__file__).parent.parent / "interop" / "app.rb"
BOOT_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"'{name}' is not on PATH: the interop tests need Debian's ruby-sidekiq "
            "(apt-get install ruby-sidekiq). Refusing to skip: CI must prove they ran.",
            pytrace=False,
        )
    return path


class Machine:
    """One real ``sidekiq`` with ``DYNO=<machine>`` (and ``-g <tag>`` when given)."""

    def __init__(self, redis_url: str, log_dir: Path, machine: str, tag: str, n: int) -> None:
        self.machine = machine
        self.log = log_dir / f"sidekiq-{n}.log"
        self._log_file = self.log.open("wb")
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "RUBY", "BUNDLE"))
        }
        env.update(REDIS_URL=redis_url, DYNO=machine)
        args = [require_binary("sidekiq"), "-r", str(APP), "-c", "2", "-q", "default", "-t", "10"]
        self.proc = subprocess.Popen(
            [*args, *(["-g", tag] if tag else [])],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=log_dir,
        )
        self.identity = ""

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "--- Sidekiq log (tail) ---\n" + "\n".join(text[-lines:])

    def wait_registered(self, raw: redis.Redis) -> str:
        """Its identity, once its first beat is in Redis."""
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"sidekiq exited with {self.proc.returncode}\n{self.tail()}")
            for member in raw.smembers("processes"):
                identity = member.decode() if isinstance(member, bytes) else str(member)
                info = raw.hget(identity, "info")
                if info is not None and json.loads(info).get("pid") == self.proc.pid:
                    self.identity = identity
                    return identity
            time.sleep(0.1)
        pytest.fail(f"sidekiq did not register within {BOOT_TIMEOUT_S:g}s\n{self.tail()}")

    def stop(self) -> None:
        """TERM, as flyctl's update stops a Machine: Sidekiq clears its heartbeat and exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log_file.close()


class Machines:
    def __init__(self, redis_url: str, raw: redis.Redis) -> None:
        self.redis_url, self.raw = redis_url, raw
        self.log_dir = Path(tempfile.mkdtemp(prefix="quiesce-machines-"))
        self.started: list[Machine] = []

    def boot(self, machine: str, *, tag: str = "") -> Machine:
        m = Machine(self.redis_url, self.log_dir, machine, tag, len(self.started))
        self.started.append(m)
        m.wait_registered(self.raw)
        return m

    def close(self) -> None:
        try:
            for m in self.started:
                m.stop()
        finally:
            shutil.rmtree(self.log_dir, ignore_errors=True)


@pytest.fixture
def machines(redis_url: str, raw: redis.Redis) -> Iterator[Machines]:
    """Boots real Sidekiq processes as Machines; stops every one afterwards."""
    m = Machines(redis_url, raw)
    try:
        yield m
    finally:
        m.close()
