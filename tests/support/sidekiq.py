"""Running a real Sidekiq (Debian's ruby-sidekiq) against a test Redis, and quiesce beside
it as a subprocess. A missing ``sidekiq`` or ``ruby`` fails the test, never skips it: CI
must prove the interop really ran."""

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
from typing import Any, TypeVar

import pytest
import redis

APP = Path(__file__).resolve().parents[1] / "interop" / "app.rb"
RELEASE = "interop-test"
SLEEP_S = 12
"""Long enough to be running when TSTP is popped (<= 10 s after the job starts)."""
BEAT_S = 5.0
"""Sidekiq 6.4.1's ``BEAT_PAUSE``."""
BOOT_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 30.0
RUBY_TIMEOUT_S = 30.0
QUIESCE_TIMEOUT_S = 60.0
MARK_TTL_S = 90 * 24 * 60 * 60
"""``Sidekiq::Deploy::MARK_TTL``."""

T = TypeVar("T")


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"'{name}' is not on PATH: the Sidekiq interop test needs Debian's ruby-sidekiq "
            "(apt-get install ruby-sidekiq; bin/test installs it). Refusing to skip: CI must "
            "prove the interop ran.",
            pytrace=False,
        )
    return path


def ruby_env(redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "RUBY", "BUNDLE"))}
    env["REDIS_URL"] = redis_url
    env.pop("DYNO", None)
    return env


def as_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, log: Path) -> T:
    """Poll ``probe`` until it returns something other than None; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s:g}s waiting for {what}\n{log_tail(log)}")
        time.sleep(0.1)


_LOG_NOISE = (
    "Passing the timeout as a positional argument",
    "  redis.brpop(",
    "Redis#sadd will always return an Integer",
)
"""redis-rb 4.8's deprecation warnings, one per fetch: they would bury what Sidekiq did."""


def log_tail(log: Path, lines: int = 40) -> str:
    try:
        text = [
            line
            for line in log.read_text(errors="replace").splitlines()
            if not line.startswith(_LOG_NOISE)
        ]
    except OSError:
        return "(no Sidekiq log)"
    return "--- Sidekiq log (tail) ---\n" + "\n".join(text[-lines:])


def redis_time(raw: redis.Redis) -> float:
    sec, usec = raw.time()
    return float(sec) + float(usec) / 1e6


class Sidekiq:
    """A real ``sidekiq`` process on the test Redis, its log in a temp file."""

    def __init__(self, redis_url: str, log_dir: Path, name: str = "sidekiq") -> None:
        self.binary = require_binary("sidekiq")
        self.ruby = require_binary("ruby")
        self.redis_url = redis_url
        self.log = log_dir / f"{name}.log"
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            [self.binary, "-r", str(APP), "-c", "2", "-q", "default", "-t", "10"],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=ruby_env(redis_url),
            cwd=log_dir,
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self) -> str:
        return log_tail(self.log)

    def enqueue(self, ruby_code: str) -> str:
        """Runs ``ruby_code`` with the job classes loaded: Sidekiq's own client enqueues."""
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


@pytest.fixture
def start_sidekiq(redis_url: str) -> Iterator[Callable[..., Sidekiq]]:
    """Starts Sidekiq inside the test (a missing binary is a test failure, not a setup
    error); always stops it afterwards: TERM, then KILL after ``STOP_TIMEOUT_S``.

    ``start(url)`` boots it on another Redis than the session's (request that server's
    fixture before this one, so that Sidekiq is stopped before its Redis is)."""
    log_dir = Path(tempfile.mkdtemp(prefix="quiesce-sidekiq-"))
    started: list[Sidekiq] = []

    def start(url: str | None = None) -> Sidekiq:
        started.append(Sidekiq(url or redis_url, log_dir, name=f"sidekiq-{len(started)}"))
        return started[-1]

    try:
        yield start
    finally:
        try:
            for process in started:
                process.stop()
        finally:
            shutil.rmtree(log_dir, ignore_errors=True)


def run_quiesce(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "QUIESCE_"))}
    return subprocess.run(
        [sys.executable, "-m", "quiesce", "--redis-url", redis_url, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=QUIESCE_TIMEOUT_S,
        check=False,
    )


def registered(raw: redis.Redis, pid: int) -> str | None:
    """The identity of the process with this pid, once its first beat is in Redis."""
    for member in raw.smembers("processes"):
        identity = as_text(member)
        assert identity is not None
        info = as_text(raw.hget(identity, "info"))
        if info is not None and json.loads(info).get("pid") == pid:
            return identity
    return None


def hash_field(raw: redis.Redis, identity: str, name: str) -> str | None:
    return as_text(raw.hget(identity, name))


def next_beat(raw: redis.Redis, identity: str, seen: str | None, log: Path, n: int) -> str:
    """Waits for the ``beat`` field to move on from ``seen``: the process keeps beating."""

    def probe() -> str | None:
        beat = hash_field(raw, identity, "beat")
        return beat if beat is not None and beat != seen else None

    return wait_for(
        f"beat {n} after the RecordJob was enqueued (the process must keep beating)",
        probe,
        BEAT_S * 2 + 1,
        log,
    )


def ruby_mark_stamps(ruby: str, *instants: float) -> set[tuple[str, str]]:
    """``(datecode, stamp)`` as ``Sidekiq::Deploy#mark`` (7.0+) computes them, in Ruby.

    Sidekiq 6.4.1 has no ``Sidekiq::Deploy``; this is its computation verbatim:
    the UTC time floored to the minute, ``strftime("%Y%m%d")`` and ``Time#iso8601``.
    """
    code = (
        "ARGV.each { |t| whence = Time.at(Rational(t)).utc; "
        "floor = Time.utc(whence.year, whence.month, whence.mday, whence.hour, whence.min, 0); "
        'puts "#{floor.strftime(%q(%Y%m%d))} #{floor.iso8601}" }'
    )
    done = subprocess.run(
        [ruby, "-rtime", "-e", code, *(f"{t:.6f}" for t in instants)],
        capture_output=True,
        text=True,
        timeout=RUBY_TIMEOUT_S,
        check=True,
    )
    pairs = set()
    for line in done.stdout.splitlines():
        datecode, stamp = line.split()
        pairs.add((datecode, stamp))
    return pairs


def find_process(status: dict[str, Any], identity: str) -> dict[str, Any]:
    for machine in status["machines"]:
        for proc in machine["processes"]:
            if proc["identity"] == identity:
                found: dict[str, Any] = proc
                return found
    pytest.fail(f"{identity} is missing from quiesce status: {json.dumps(status)}")


def boot_sidekiq(
    start_sidekiq: Callable[..., Sidekiq], raw: redis.Redis, url: str | None = None
) -> tuple[Sidekiq, str]:
    """Sidekiq boots and registers (first beat: SADD processes + the identity hash)."""
    sidekiq = start_sidekiq(url)
    identity = wait_for(
        "Sidekiq to register in 'processes'",
        lambda: registered(raw, sidekiq.proc.pid) if sidekiq.proc.poll() is None else "exited",
        BOOT_TIMEOUT_S,
        sidekiq.log,
    )
    assert identity != "exited", f"sidekiq exited with {sidekiq.proc.returncode}\n{sidekiq.tail()}"
    return sidekiq, identity


def spawn_quiesce(redis_url: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "QUIESCE_"))}
    return subprocess.Popen(
        [sys.executable, "-m", "quiesce", "--redis-url", redis_url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish_quiesce(quiesce: subprocess.Popen[str], timeout_s: float) -> tuple[int, str, str]:
    try:
        out, err = quiesce.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        quiesce.kill()
        out, err = quiesce.communicate(timeout=10)
        pytest.fail(f"quiesce still running after {timeout_s:g}s\n{out}\n{err}")
    return quiesce.returncode, out, err


def kill_quiesce(quiesce: subprocess.Popen[str] | None) -> None:
    if quiesce is not None and quiesce.poll() is None:
        quiesce.kill()
        quiesce.communicate(timeout=10)


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
