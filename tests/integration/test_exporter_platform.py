"""The exporter under what a platform sends (issue 16): TERM with a keep-alive connection
open, 20 Prometheus servers scraping at once, and queue names that used to collide."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from quiesce.adapters.prometheus import ExporterServer, QuiesceCollector, serve
from quiesce.adapters.redis.store import SidekiqStore
from quiesce.settings import build_settings
from quiesce.sim.simulator import make_processes
from tests.support import free_port, simulated_fleet

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL = shutil.which("promtool")


def scrape(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=60) as response:
        body: bytes = response.read()
    return body.decode()


@pytest.fixture
def serving(redis_url: str) -> Iterator[tuple[str, SidekiqStore]]:
    settings = build_settings(urls=[redis_url])
    store = SidekiqStore(settings.redis[0], settings)
    server = ExporterServer(("127.0.0.1", 0), QuiesceCollector(store))
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(server, stop))
    thread.start()
    try:
        yield server.url, store
    finally:
        stop.set()
        thread.join(timeout=10)
        store.close()


def _keep_alive(port: int) -> socket.socket:
    """A connection as Prometheus holds it: one scrape answered, then left open."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
    data = b""
    while b"quiesce_build_info" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the exporter closed the connection before answering"
        data += chunk
    return sock


def test_term_stops_the_cli_exporter_with_a_keep_alive_connection_open(redis_url: str) -> None:
    procs = make_processes(2, version="7.3.10", seed=3)
    sim = simulated_fleet(redis_url, procs)
    sim.beat(procs, time.time())
    sim.client.close()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUIESCE_", "REDIS_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "quiesce", "exporter", "-r", redis_url, "--listen",
         f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    sock = None
    try:
        deadline = time.monotonic() + 30
        while sock is None and time.monotonic() < deadline:
            try:
                sock = _keep_alive(port)
            except ConnectionRefusedError:
                time.sleep(0.1)
        assert sock is not None
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        try:
            _, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            pytest.fail("the exporter was still running 5 s after TERM")
        # A bound, not a benchmark: the old exporter never stopped at all.
        assert time.monotonic() - sent < 5
        assert proc.returncode == 0, err
        assert "stopped" in err and "Traceback" not in err
    finally:
        if sock is not None:
            sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_twenty_concurrent_scrapes_over_10000_queues_all_answer_up(
    serving: tuple[str, SidekiqStore], raw: redis.Redis, redis_url: str
) -> None:
    url, _ = serving
    procs = make_processes(3, version="7.3.10", seed=5)
    sim = simulated_fleet(redis_url, procs)
    sim.beat(procs, time.time())
    sim.client.close()
    pipe = raw.pipeline(transaction=False)
    names = [f"queue_{i:05d}" for i in range(10_000)]
    pipe.sadd("queues", *names)
    for name in names[:2000]:
        pipe.lpush(f"queue:{name}", '{"class":"X","jid":"j","enqueued_at":1700000000.0}')
    pipe.execute()
    bodies: list[str] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            bodies.append(scrape(url))
        except BaseException as exc:  # reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(bodies) == 20
    assert all("\nquiesce_up 1.0\n" in b for b in bodies)
    assert all('quiesce_queue_size{queue="queue_01999"} 1.0' in b for b in bodies)


def test_a_typed_backslash_x_and_a_raw_byte_are_two_series(
    serving: tuple[str, SidekiqStore], raw: redis.Redis
) -> None:
    url, _ = serving
    raw.sadd("queues", b"bad\\xffbyte", b"bad\xffbyte")
    body = scrape(url)
    sizes = [line for line in body.splitlines() if line.startswith("quiesce_queue_consumers{")]
    bad = sorted(line for line in sizes if "bad" in line)
    assert bad == [
        'quiesce_queue_consumers{queue="bad\\\\\\\\xffbyte"} 0.0',  # typed: bad\xffbyte
        'quiesce_queue_consumers{queue="bad\\\\xffbyte"} 0.0',  # the raw byte 0xFF
    ]
    if PROMTOOL is None:
        pytest.skip("promtool not installed (Debian's prometheus package; bin/setup)")
    result = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
