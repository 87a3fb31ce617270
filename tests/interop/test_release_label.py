"""The release-label initializer of docs/deploy-ledger.md (and the README), on the real
Sidekiq 6.4.1: it boots and the heartbeat carries ``release:<image>``; the line the
README used to show first (``config[:labels] <<``) kills 6.4 at boot."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "registry.fly.io/my-app:deployment-01JNEWNEWNEWNEWNEWNEWNEWNEW"
BOOT_LIMIT_S = 60.0
"""How long Sidekiq may take to register (a wait, not an assertion about speed)."""


def snippet(document: Path) -> str:
    """The ```ruby block of the document that configures the release label."""
    blocks = re.findall(r"```ruby\n(.*?)```", document.read_text(), flags=re.DOTALL)
    (block,) = [b for b in blocks if "release:#{image}" in b]
    return "\n".join(line.strip() for line in block.splitlines())


def boot(initializer: str, redis_url: str, tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    binary = shutil.which("sidekiq")
    if binary is None:
        pytest.fail("'sidekiq' is not on PATH (apt-get install ruby-sidekiq)", pytrace=False)
    app = tmp_path / "app.rb"
    app.write_text('require "sidekiq"\n' + initializer + "\n")
    log = tmp_path / "sidekiq.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "RUBY", "BUNDLE"))}
    env.update(REDIS_URL=redis_url, FLY_IMAGE_REF=IMAGE)
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [binary, "-r", str(app), "-c", "1", "-t", "5"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    return proc, log


def registered_labels(raw: redis.Redis, proc: subprocess.Popen[bytes]) -> list[str] | None:
    """The labels of the process once it beat; None if it exited first."""
    deadline = time.monotonic() + BOOT_LIMIT_S
    while time.monotonic() < deadline and proc.poll() is None:
        for member in raw.smembers("processes"):
            info = raw.hget(str(member), "info")
            if info and json.loads(info).get("pid") == proc.pid:
                return list(json.loads(info)["labels"])
        time.sleep(0.2)
    return None


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("document", ["docs/deploy-ledger.md", "README.md"])
def test_the_documented_snippet_labels_sidekiq_6_4(
    document: str, redis_url: str, raw: redis.Redis, tmp_path: Path
) -> None:
    proc, log = boot(snippet(ROOT / document), redis_url, tmp_path)
    try:
        labels = registered_labels(raw, proc)
    finally:
        stop(proc)
    assert labels == [f"release:{IMAGE}"], log.read_text()[-2000:]


def test_the_7x_line_alone_kills_sidekiq_6_4_at_boot(
    redis_url: str, raw: redis.Redis, tmp_path: Path
) -> None:
    initializer = (
        "Sidekiq.configure_server do |config|\n"
        '  config[:labels] << "release:#{ENV["FLY_IMAGE_REF"]}"\n'
        "end"
    )
    proc, log = boot(initializer, redis_url, tmp_path)
    try:
        assert registered_labels(raw, proc) is None
        assert proc.wait(30) != 0
    finally:
        stop(proc)
    assert "undefined method `[]' for Sidekiq:Module" in log.read_text()
