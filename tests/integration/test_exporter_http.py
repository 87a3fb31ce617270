"""The exporter over HTTP: content negotiation, /healthz, promtool on a real scrape and on
the shipped rules, a real Prometheus server scraping it, and the CLI's clean shutdown."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from quiesce.adapters.prometheus import (
    DEFAULT_PORT,
    ExporterServer,
    QuiesceCollector,
    parse_listen,
    serve,
)
from quiesce.adapters.redis.store import SidekiqStore
from quiesce.cli import exporter as cli_exporter
from quiesce.cli.app import app
from quiesce.settings import build_settings
from quiesce.sim.simulator import make_processes
from tests.support import FIXTURES, free_port, load_fixture_keys, simulated_fleet

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "quiesce-alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "quiesce-alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "quiesce-dashboard.json"

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian's prometheus package; bin/setup)"
)
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not installed (Debian's prometheus package; bin/setup)"
)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


@pytest.fixture
def exporter(redis_url: str, raw: redis.Redis) -> Iterator[str]:
    """A fleet quiet with jobs waiting (real Sidekiq 8.1.7 data), served on a free port."""
    data = json.loads((FIXTURES / "sidekiq-8.1.7" / "after-quiet-enqueue.json").read_text())
    load_fixture_keys(raw, data["keys"])
    raw.sadd("queues", 'odd "queue"\nname')
    settings = build_settings(urls=[redis_url])
    store = SidekiqStore(settings.redis[0], settings)
    server = ExporterServer(("127.0.0.1", 0), QuiesceCollector(store))
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(server, stop))
    thread.start()
    try:
        yield server.url
    finally:
        stop.set()
        thread.join()
        store.close()


def test_text_and_openmetrics_by_accept_header(exporter: str) -> None:
    status, content_type, body = get(f"{exporter}/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    assert "quiesce_up 1.0" in body and "# EOF" not in body
    status, content_type, body = get(
        f"{exporter}/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert status == 200 and content_type.startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")
    assert "# UNIT quiesce_queue_latency_seconds seconds" in body


def test_healthz_and_scrape_timeout_header(exporter: str) -> None:
    assert get(f"{exporter}/healthz")[:1] == (200,)
    status, _, body = get(f"{exporter}/metrics", {"X-Prometheus-Scrape-Timeout-Seconds": "3"})
    assert status == 200 and "quiesce_up 1.0" in body
    assert get(f"{exporter}/nope")[0] == 404


def test_healthz_fails_when_redis_is_unreachable() -> None:
    settings = build_settings(urls=[f"redis://127.0.0.1:{free_port()}/0"], connect_timeout_s=1)
    store = SidekiqStore(settings.redis[0], settings)
    server = ExporterServer(("127.0.0.1", 0), QuiesceCollector(store))
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(server, stop))
    thread.start()
    try:
        status, _, body = get(f"{server.url}/healthz")
        assert status == 503 and "connection refused" in body
        status, _, body = get(f"{server.url}/metrics")
        assert status == 200 and "quiesce_up 0.0" in body
    finally:
        stop.set()
        thread.join()


def test_serves_on_ipv6_loopback(redis_url: str) -> None:
    settings = build_settings(urls=[redis_url])
    store = SidekiqStore(settings.redis[0], settings)
    try:
        server = ExporterServer(("::1", 0), QuiesceCollector(store))
    except OSError as exc:
        store.close()
        pytest.skip(f"no IPv6 loopback here: {exc}")
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(server, stop))
    thread.start()
    try:
        assert server.url.startswith("http://[::1]:")
        assert get(f"{server.url}/healthz")[0] == 200
    finally:
        stop.set()
        thread.join()
        store.close()


def test_listen_parsing_and_default_port() -> None:
    assert parse_listen("0.0.0.0:10437") == ("0.0.0.0", 10437)
    assert parse_listen(":9000") == ("0.0.0.0", 9000)
    assert parse_listen("9000") == ("0.0.0.0", 9000)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    with pytest.raises(ValueError):
        parse_listen("host:http")
    assert f"0.0.0.0:{DEFAULT_PORT}" == cli_exporter.EXPORTER_LISTEN
    # No other Sidekiq exporter's default port (docs: landscape, section 5.4).
    assert DEFAULT_PORT not in (9292, 9359, 9394, 9168, 9726, 7433, 9090)


# -- promtool -------------------------------------------------------------------------------
@needs_promtool
def test_promtool_accepts_a_real_scrape(exporter: str) -> None:
    assert PROMTOOL is not None
    _, _, body = get(f"{exporter}/metrics")
    assert "quiesce_queue_size" in body and 'odd \\"queue\\"\\nname' in body
    result = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


@needs_promtool
def test_promtool_checks_and_tests_the_shipped_rules() -> None:
    assert PROMTOOL is not None
    check = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 6 rules found" in check.stdout
    unit = subprocess.run(
        [PROMTOOL, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=60
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert "SUCCESS" in unit.stdout


def test_dashboard_uses_only_exported_metrics(exporter: str) -> None:
    import re

    _, _, body = get(f"{exporter}/metrics")
    exported = set(re.findall(r"^# TYPE (\w+) ", body, flags=re.M))
    # Metrics that need Postgres or a deploy record are not in this scrape: name them.
    exported |= {
        "quiesce_postgres_backends",
        "quiesce_postgres_max_connections",
        "quiesce_postgres_projected_peak_backends",
        "quiesce_deploy_info",
        "quiesce_deploy_start_timestamp_seconds",
    }
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"]]
    used = {m for e in exprs for m in re.findall(r"\bquiesce_\w+", e)}
    assert used and used <= exported, used - exported
    rules = RULES.read_text()
    assert set(re.findall(r"\bquiesce_\w+", rules)) <= exported


# -- a real Prometheus server ---------------------------------------------------------------
@needs_prometheus
def test_prometheus_scrapes_the_exporter(exporter: str) -> None:
    assert PROMETHEUS is not None
    target = urllib.parse.urlparse(exporter).netloc
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="quiesce-prom-") as tmp:
        config = Path(tmp) / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: quiesce\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        log = (Path(tmp) / "prometheus.log").open("w")
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp}/data",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            query = urllib.parse.quote('quiesce_queue_paused{queue="default",reason="no_consumer"}')
            url = f"http://127.0.0.1:{port}/api/v1/query?query={query}"
            result: list[dict[str, object]] = []
            deadline = time.monotonic() + 60
            while not result and time.monotonic() < deadline:
                time.sleep(0.5)
                try:
                    _, _, body = get(url)
                except OSError:
                    continue
                result = json.loads(body).get("data", {}).get("result", [])
            assert result, (Path(tmp) / "prometheus.log").read_text()[-2000:]
            assert result[0]["value"][1] == "1"  # type: ignore[index]
            _, _, body = get(f"http://127.0.0.1:{port}/api/v1/targets")
            (active,) = json.loads(body)["data"]["activeTargets"]
            assert active["health"] == "up", active
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()


# -- the command ----------------------------------------------------------------------------
def test_cli_serves_and_stops_cleanly_on_term(redis_url: str) -> None:
    procs = make_processes(2, version="7.3.10", seed=9)
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
    try:
        body = ""
        deadline = time.monotonic() + 30
        while "quiesce_processes" not in body and time.monotonic() < deadline:
            try:
                _, _, body = get(f"http://127.0.0.1:{port}/metrics")
            except OSError:
                time.sleep(0.1)
        assert 'quiesce_processes{state="running"} 2.0' in body
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "serving http://127.0.0.1:" in err and "stopped" in err
    assert "Traceback" not in err


def test_cli_refuses_two_redis_urls(redis_url: str) -> None:
    from typer.testing import CliRunner

    other = f"redis://127.0.0.1:{free_port()}/1"
    result = CliRunner().invoke(app, ["exporter", "-r", redis_url, "-r", other])
    assert result.exit_code == 2
    assert "one exporter per Redis URL" in result.stderr
