"""The command line: output, JSON, exit codes, and every failure as one clear line."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis
from typer.testing import CliRunner

from quiesce.cli.app import app
from quiesce.sim.simulator import SimulatedFleet, make_processes
from tests.support import (
    FIXTURES,
    RedisServer,
    dump_keys_with_ttls,
    load_fixture_keys,
    simulated_fleet,
    ttl_changes,
)

runner = CliRunner()
PASSWORD = "s3cret-hunter2"


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def assert_one_line_error(stderr: str, *needles: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("quiesce: error: "), stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def fleet(redis_url: str) -> Iterator[SimulatedFleet]:
    sim: SimulatedFleet = simulated_fleet(
        redis_url, make_processes(6, per_machine=2, seed=5, tag="app"), beat_interval_s=0.3
    )
    with sim:
        yield sim


def test_help_explains_commands_and_exit_codes() -> None:
    code, out, _ = run("--help")
    assert code == 0
    for word in ("quiet", "status", "simulate", "Exit status", "4  Redis unreachable", "REDIS_URL"):
        assert word in out
    code, out, _ = run("quiet", "--help")
    assert code == 0 and "--until" in out and "--best-effort" in out and "--dry-run" in out


def test_status_groups_by_machine(redis_url: str, fleet: SimulatedFleet) -> None:
    code, out, _ = run("--redis-url", redis_url, "status")
    assert code == 0
    for machine in {p.hostname for p in fleet.processes}:
        assert f"{machine}  (2 processes: 2 running)" in out
    assert "6 processes on 3 machines: 6 running" in out


def test_status_json_fields(redis_url: str, fleet: SimulatedFleet) -> None:
    code, out, _ = run("--redis-url", redis_url, "status", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["version"] == 1
    assert data["summary"]["processes"] == 6 and data["summary"]["running"] == 6
    proc = data["machines"][0]["processes"][0]
    for field in (
        "identity", "machine", "pid", "state", "version", "tag", "labels", "busy",
        "concurrency", "beat_age_s", "quiet_for_s", "pending_signals", "rss_kib",
    ):  # fmt: skip
        assert field in proc
    assert proc["version"] == "7.3.10" and proc["tag"] == "app"


def test_quiet_then_status_expect(redis_url: str, fleet: SimulatedFleet) -> None:
    assert run("--redis-url", redis_url, "status", "--expect", "quiet")[0] == 3
    code, out, _ = run("--redis-url", redis_url, "quiet", "--until", "quiet", "--release", "v2")
    assert code == 0, out
    assert "6 confirmed" in out and "OK in" in out
    code, out, err = run("--redis-url", redis_url, "status", "--expect", "quiet")
    assert code == 0, err
    assert "latest deploy:" in out and "release v2" in out
    data = json.loads(run("--redis-url", redis_url, "status", "--json")[1])
    quiet_for = [p["quiet_for_s"] for m in data["machines"] for p in m["processes"]]
    assert all(q is not None and q >= 0 for q in quiet_for)
    assert run("--redis-url", redis_url, "status", "--expect", "running")[0] == 3


def test_quiet_json_report(redis_url: str, fleet: SimulatedFleet) -> None:
    code, out, _ = run("--redis-url", redis_url, "quiet", "--json", "--strategy", "immediate")
    assert code == 0
    data = json.loads(out)
    assert data["ok"] and data["exit_code"] == 0 and data["counts"] == {"confirmed": 6}
    assert data["strategy"] == "immediate" and data["deploy_id"]
    assert {p["outcome"] for p in data["processes"]} == {"confirmed"}


def test_release_label_from_env(
    redis_url: str, fleet: SimulatedFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLY_IMAGE_REF", "registry.fly.io/app:deployment-XYZ")
    monkeypatch.setenv("REDIS_URL", redis_url)
    code, out, _ = run("quiet", "--json")
    assert code == 0 and json.loads(out)["release"] == "registry.fly.io/app:deployment-XYZ"


def test_stalled_process_exit_3_and_best_effort_exit_0(
    redis_url: str, fleet: SimulatedFleet
) -> None:
    fleet.processes[0].stalled = True
    time.sleep(0.5)
    code, out, _ = run("--redis-url", redis_url, "quiet", "--timeout", "1.5")
    assert code == 3
    assert "NOT_CONFIRMED" in out and "FAILED: 1 process not confirmed quiet; exit 3" in out
    fleet.processes[1].stalled = True
    time.sleep(0.5)
    code, out, _ = run("--redis-url", redis_url, "quiet", "--timeout", "1", "--best-effort")
    assert code == 0 and "exit 0 (--best-effort)" in out


def test_dry_run_lists_plan_and_writes_nothing(
    redis_url: str, fleet: SimulatedFleet, raw: redis.Redis
) -> None:
    code, out, _ = run("--redis-url", redis_url, "quiet", "--dry-run", "--release", "x")
    assert code == 0
    assert "dry run: would signal TSTP to 6 processes on 3 machines" in out
    assert out.count("PLANNED") == 6
    assert not raw.keys("*-signals") and not raw.keys("quiesce:*") and not raw.keys("*-marks")


def test_empty_redis_is_an_empty_fleet(redis_url: str) -> None:
    code, out, _ = run("--redis-url", redis_url, "status")
    assert code == 0 and "no Sidekiq processes registered" in out
    code, out, _ = run("--redis-url", redis_url, "quiet", "--json")
    assert code == 0 and json.loads(out)["processes"] == []
    code, out, _ = run("--redis-url", redis_url, "quiet", "--release", "v1")
    assert code == 0 and "no live Sidekiq processes registered" in out
    # A first deploy: its record (so rejoin has one to judge by), no deploy mark.
    assert not [key for key in raw_keys(redis_url) if not key.startswith("quiesce:deploy:")]


def raw_keys(url: str) -> list[str]:
    import redis as redis_py

    client = redis_py.Redis.from_url(url, decode_responses=True)
    try:
        return sorted(str(k) for k in client.keys("*"))
    finally:
        client.close()


@pytest.mark.parametrize("version", ["6.4.1", "7.3.10", "8.1.7"])
def test_sidekiq_data_unchanged_by_status_and_quiet(
    version: str, redis_url: str, redis_server: RedisServer
) -> None:
    """Only signal lists, the deploy mark and quiesce's own keys may change: no other value,
    and no other TTL (tests/test_readonly.py checks the read-only commands on the wire)."""
    capture = json.loads((FIXTURES / f"sidekiq-{version}" / "busy.json").read_text())
    client = redis_server.client()
    load_fixture_keys(client, capture["keys"])
    ours = ("-signals", "-marks", "deploylock-", "quiesce:")
    before = dump_keys_with_ttls(client, skip=ours)
    assert run("--redis-url", redis_url, "status", "--json")[0] == 0
    code, out, _ = run("--redis-url", redis_url, "quiet", "--timeout", "0.5", "--release", "r1")
    assert code == 3 and "FAILED" in out  # nothing beats: the captured process is frozen
    after = dump_keys_with_ttls(client, skip=ours)
    assert ttl_changes(before, after) == []  # values identical, TTLs only ran down
    assert client.lrange(f"{capture['identity']}-signals", 0, -1) == [b"TSTP"]


# -- failures: one line, a documented exit code, bounded time ---------------------------


def test_unreachable_redis_exit_4() -> None:
    started = time.monotonic()
    code, _, err = run("--redis-url", "redis://127.0.0.1:1/0", "quiet")
    assert code == 4
    assert_one_line_error(err, "connection refused", "redis://127.0.0.1:1/0")
    assert time.monotonic() - started < 10


def test_bad_url_exit_2() -> None:
    code, _, err = run("--redis-url", f"http://user:{PASSWORD}@x", "status")
    assert code == 2
    assert_one_line_error(err, "scheme must be")
    assert PASSWORD not in err


@pytest.fixture(scope="module")
def locked_server() -> Iterator[RedisServer]:
    with RedisServer("--requirepass", PASSWORD) as server:
        yield server


def test_wrong_password_exit_5_and_password_never_printed(locked_server: RedisServer) -> None:
    url = f"redis://:wrong-{PASSWORD}@127.0.0.1:{locked_server.port}/0"
    code, out, err = run("--redis-url", url, "status")
    assert code == 5
    assert_one_line_error(err, "authentication", ":***@127.0.0.1")
    assert PASSWORD not in out + err


def test_missing_password_exit_5(locked_server: RedisServer) -> None:
    code, _, err = run("--redis-url", f"redis://127.0.0.1:{locked_server.port}/0", "status")
    assert code == 5
    assert_one_line_error(err, "authentication")


def test_right_password_works_and_is_masked(locked_server: RedisServer) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{locked_server.port}/0"
    code, out, err = run("--redis-url", url, "status", "--json")
    assert code == 0, err
    assert PASSWORD not in out and ":***@" in json.loads(out)["servers"][0]["redis"]


def test_tls_against_a_plain_port_exit_5(redis_url: str) -> None:
    started = time.monotonic()
    tls_url = redis_url.replace("redis://", "rediss://")
    code, _, err = run("--redis-url", tls_url, "--read-timeout", "1", "status")
    assert code == 5
    assert_one_line_error(err, "TLS")
    assert time.monotonic() - started < 10


def test_acl_denied_command_exit_5(redis_url: str, raw: redis.Redis, fleet: SimulatedFleet) -> None:
    raw.acl_setuser(
        "readonly",
        enabled=True,
        passwords=["+ropass"],
        keys=["*"],
        commands=["+@read", "+time", "+info"],
    )
    url = redis_url.replace("redis://", "redis://readonly:ropass@")
    assert run("--redis-url", url, "status")[0] == 0  # reads are enough for status
    code, _, err = run("--redis-url", url, "quiet")
    assert code == 5
    assert_one_line_error(err, "ACL")
    assert "ropass" not in err


def test_wrong_type_processes_key_exit_6(redis_url: str, raw: redis.Redis) -> None:
    raw.set("processes", "not a set")
    code, _, err = run("--redis-url", redis_url, "status")
    assert code == 6
    assert_one_line_error(err, "wrong Redis type")


def test_redis_without_time_command_still_works() -> None:
    """Managed Redis services sometimes rename TIME: quiesce falls back to its own clock."""
    with (
        RedisServer("--rename-command", "TIME", '""') as server,
        simulated_fleet(server.url, make_processes(2, seed=8), beat_interval_s=0.3),
    ):
        code, out, err = run("--redis-url", server.url, "quiet", "--release", "t")
        assert code == 0, out + err
        assert "2 confirmed" in out


def test_best_effort_covers_configuration_errors_too() -> None:
    code, _, err = run("--redis-url", "http://nope", "quiet", "--best-effort")
    assert code == 0
    assert "scheme must be" in err and "--best-effort: exiting 0 anyway" in err
    code, _, err = run("--redis-url", "redis://127.0.0.1:1/0", "quiet", "--best-effort")
    assert code == 0 and "connection refused" in err


@pytest.mark.parametrize("command", [["status"], ["simulate", "--duration", "1"]])
def test_every_command_reports_config_errors_in_one_line(command: list[str]) -> None:
    code, _, err = run("--redis-url", "redis://host/notadb", *command)
    assert code == 2
    assert_one_line_error(err, "database must be a number")


def test_unix_socket_url(tmp_path: object) -> None:
    import pathlib

    sock = pathlib.Path(str(tmp_path)) / "redis.sock"
    with RedisServer("--unixsocket", str(sock)) as server:
        server.client().sadd("processes", "ghost:1:0123456789ab")
        code, out, err = run("--redis-url", f"unix://{sock}?db=0", "status", "--json")
        assert code == 0, err
        assert json.loads(out)["summary"]["dead"] == 1


def test_status_watch_refreshes_until_interrupted(redis_url: str, fleet: SimulatedFleet) -> None:
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "quiesce",
            "--redis-url",
            redis_url,
            "status",
            "--watch",
            "--interval",
            "0.3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    assert out.count("6 processes on 3 machines") >= 2
    assert err.strip() == "quiesce: interrupted"


def test_verbose_logs_never_show_the_password(locked_server: RedisServer) -> None:
    import subprocess
    import sys

    url = f"redis://:wrong-{PASSWORD}@127.0.0.1:{locked_server.port}/0"
    done = subprocess.run(
        [sys.executable, "-m", "quiesce", "-v", "--redis-url", url, "quiet"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 5
    assert "Traceback" in done.stderr  # -v logs the traceback ...
    assert PASSWORD not in done.stdout + done.stderr  # ... but never the secret
    assert done.stderr.strip().splitlines()[-1].startswith("quiesce: error: Redis refused")


def test_simulate_registers_and_leaves_on_sigterm(redis_url: str, raw: redis.Redis) -> None:
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "quiesce", "--redis-url", redis_url, "simulate", "--processes", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 10
    while raw.scard("processes") < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert raw.scard("processes") == 3
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert raw.scard("processes") == 0  # left like Sidekiq's clean shutdown; hashes linger
    assert len(raw.keys("*:*:*")) == 3


def test_simulate_refuses_to_join_a_real_fleet(redis_url: str, fleet: SimulatedFleet) -> None:
    code, _, err = run("--redis-url", redis_url, "simulate", "--duration", "1")
    assert code == 2
    assert_one_line_error(err, "6 other Sidekiq processes", "--force")


def test_status_one_line_per_machine(redis_url: str, fleet: SimulatedFleet) -> None:
    code, out, _ = run("--redis-url", redis_url, "status", "--machines")
    assert code == 0
    rows = [line for line in out.splitlines() if line[:14] in {p.hostname for p in fleet.processes}]
    assert len(rows) == 3
    assert all(" 2 " in row and "0/10" in row and "2 running" in row for row in rows)


# -- inputs refused with exit 2, in one line --------------------------------------------

REFUSED = "redis://127.0.0.1:1/0"  # nothing listens: a refused input must never get this far


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["quiet", "--timeout", "nan"], "--timeout"),
        (["quiet", "--timeout", "-1"], "--timeout"),
        (["quiet", "--timeout", "inf"], "--timeout"),
        (["--read-timeout", "nan", "status"], "--read-timeout"),
        (["--connect-timeout", "inf", "status"], "--connect-timeout"),
        (["--read-timeout", "1e308", "status"], "--read-timeout"),
        (["--connect-timeout", "0", "status"], "--connect-timeout"),
        (["status", "--read-timeout", "nan"], "--read-timeout"),
        (["status", "--interval", "nan"], "--interval"),
        (["status", "--interval", "-1"], "--interval"),
        (["status", "--interval", "0"], "--interval"),
        (["status", "--expect", "dead"], "--expect"),
        (["simulate", "--per-machine", "0"], "--per-machine"),
        (["simulate", "--processes", "-5"], "--processes"),
        (["simulate", "--processes", "0"], "--processes"),
        (["simulate", "--sidekiq-version", "banana"], "5.2 to 8.x"),
        (["simulate", "--sidekiq-version", "4.2.0"], "5.2 to 8.x"),
        (["simulate", "--sidekiq-version", "9.0"], "5.2 to 8.x"),
        (["simulate", "--beat-interval", "0"], "--beat-interval"),
        (["simulate", "--beat-interval", "-2"], "--beat-interval"),
        (["simulate", "--beat-interval", "nan"], "--beat-interval"),
        (["simulate", "--duration", "nan"], "--duration"),
        (["status", "--no-such-option"], "--no-such-option"),
        (["nonsense"], "nonsense"),
    ],
)
def test_bad_inputs_exit_2_in_one_line(args: list[str], needle: str) -> None:
    code, out, err = run("-r", REFUSED, *args)
    assert code == 2, out + err
    assert_one_line_error(err, needle)


@pytest.mark.parametrize("value", ["", ",", " , "])
def test_empty_redis_url_never_falls_back(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", REFUSED)  # the fallback would be refused: exit 4
    for args in (["-r", value, "status"], ["status", "-r", value], ["-r", value, "quiet"]):
        code, _, err = run(*args)
        assert code == 2, err
        assert_one_line_error(err, "empty --redis-url")


def test_simulate_accepts_known_versions(redis_url: str, raw: redis.Redis) -> None:
    for version in ("5.2.10", "6.5", "8.1.7"):
        code, _, err = run("-r", redis_url, "simulate", "--processes", "1", "--duration", "0.2",
                           "--sidekiq-version", version, "--beat-interval", "0.1")  # fmt: skip
        assert code == 0, err


# -- polish -------------------------------------------------------------------------------


def test_one_process_one_machine_singular(redis_url: str) -> None:
    sim: SimulatedFleet = simulated_fleet(redis_url, make_processes(1, seed=3), beat_interval_s=0.3)
    with sim:
        code, out, _ = run("-r", redis_url, "status")
        assert code == 0
        assert "1 process on 1 machine: 1 running" in out
        assert "(1 process: 1 running)" in out
        code, out, _ = run("-r", redis_url, "quiet", "--dry-run")
        assert "would signal TSTP to 1 process on 1 machine" in out
        code, out, _ = run("-r", redis_url, "quiet", "--until", "quiet")
        assert code == 0 and "signalled TSTP to 1 process on 1 machine" in out
        code, _, err = run("-r", redis_url, "status", "--expect", "running")
        assert code == 3 and "1 of 1 live processes not running" in err


def test_status_json_machines_has_summaries_only(redis_url: str, fleet: SimulatedFleet) -> None:
    code, out, _ = run("-r", redis_url, "status", "--json", "--machines")
    assert code == 0
    data = json.loads(out)
    assert data["summary"]["processes"] == 6 and len(data["machines"]) == 3
    for machine in data["machines"]:
        assert set(machine) == {"machine", "summary", "oldest_beat_age_s"}
        assert machine["summary"]["processes"] == 2 and machine["summary"]["running"] == 2
        assert machine["oldest_beat_age_s"] is not None
    full = json.loads(run("-r", redis_url, "status", "--json")[1])
    assert all(len(m["processes"]) == 2 for m in full["machines"])


def test_connection_options_after_the_command(redis_url: str, fleet: SimulatedFleet) -> None:
    code, out, err = run("status", "-r", redis_url, "--read-timeout", "2", "--json")
    assert code == 0, err
    assert json.loads(out)["summary"]["processes"] == 6
    code, out, err = run("-r", REFUSED, "--namespace", "other", "status", "-r", redis_url,
                         "--namespace", "")  # fmt: skip
    assert code == 0, err  # the command's values win
    assert "6 processes on 3 machines" in out
    code, _, err = run("-r", redis_url, "quiet", "-r", REFUSED)
    assert code == 4, err


def test_short_help_everywhere() -> None:
    for args in (["-h"], ["status", "-h"], ["quiet", "-h"], ["simulate", "-h"]):
        code, out, _ = run(*args)
        assert code == 0 and out.startswith("Usage: "), args
        assert "-r, --redis-url" in out  # connection options are listed everywhere


def test_exit_status_help_lists_every_exit_code() -> None:
    from quiesce.errors import ExitCode

    _, out, _ = run("--help")
    text = " ".join(out.split())
    for code in ExitCode:
        assert f"{code.value} {' '.join(code.description.split())}" in text
    assert "130 interrupted" in text
    _, out, _ = run("status", "--help")
    assert "[running|quiet]" in out.replace("<", "[").replace(">", "]")


def test_broken_pipe_exits_quietly(redis_url: str, fleet: SimulatedFleet) -> None:
    """``quiesce status | head -1``: exit 141 (as a tool stopped by SIGPIPE), not a word."""
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "quiesce", "-r", redis_url, "status"]
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write: EPIPE, deterministically
    try:
        done = subprocess.run(command, stdout=write_end, stderr=subprocess.PIPE, check=False)
    finally:
        os.close(write_end)
    assert done.returncode == 141 and done.stderr == b""

    proc = subprocess.Popen(
        [*command, "--watch", "--interval", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline()  # `| head -1`: one line, then the reader exits
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=30) == 141, err
    assert err == b""


def test_bin_quiesce_uses_the_checkout_venv(tmp_path: object) -> None:
    import pathlib
    import shutil
    import subprocess

    root = pathlib.Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [str(root / "bin" / "quiesce"), "--version"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("quiesce ")
    copy = pathlib.Path(str(tmp_path)) / "bin"
    copy.mkdir()
    shutil.copy(root / "bin" / "quiesce", copy / "quiesce")
    done = subprocess.run(
        [str(copy / "quiesce"), "--version"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "run bin/setup" in done.stderr


def test_broken_pipe_with_best_effort_still_exits_0(redis_url: str, fleet: SimulatedFleet) -> None:
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "quiesce", "-r", redis_url, "quiet", "--best-effort"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 0 and done.stderr == b""
