"""quiesce doctor: one test per finding (pure checks on fly.toml text), then the live-fleet
checks against the test Redis with simulated processes and busy-job hashes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis

from quiesce.errors import ConfigError
from quiesce.model.doctor import (
    Finding,
    Level,
    check_config,
    parse_duration,
    parse_fly_toml,
    read_deploy,
)
from quiesce.model.release_command import quiesce_calls
from quiesce.sim.simulator import make_processes
from tests.support import simulated_fleet
from tests.support.cli import run

GOOD = """
kill_signal = "SIGTERM"
kill_timeout = 30
[deploy]
  release_command = "quiesce quiet --strategy immediate --timeout 60"
  release_command_timeout = "5m"
  strategy = "immediate"
[processes]
  app = "bin/rails server"
  worker = "bundle exec sidekiq"
"""


def findings(text: str, **kw: object) -> dict[str, Finding]:
    config = parse_fly_toml(text)
    found = check_config(read_deploy(config, **kw), config)  # type: ignore[arg-type]
    return {f.code: f for f in found}


def test_a_good_config_has_no_findings() -> None:
    assert findings(GOOD) == {}


def test_fly_toml_example_is_clean() -> None:
    text = (Path(__file__).resolve().parents[2] / "fly.toml.example").read_text()
    assert findings(text) == {}


def test_default_kill_timeout_is_an_error() -> None:
    found = findings(GOOD.replace("kill_timeout = 30\n", ""))
    f = found["kill-timeout-short"]
    assert f.level is Level.ERROR
    assert "5 s (Fly's default)" in f.message and "25 s" in f.message
    assert "kill_timeout = 30" in f.fix


def test_sidekiq_timeout_read_from_the_worker_command() -> None:
    found = findings(GOOD.replace("bundle exec sidekiq", "bundle exec sidekiq -t 60"))
    f = found["kill-timeout-short"]
    assert "60 s (-t in [processes] worker)" in f.message
    assert "kill_timeout = 65" in f.fix


def test_sidekiq_timeout_option_wins() -> None:
    assert "kill-timeout-short" in findings(GOOD, sidekiq_timeout_s=40.0)
    assert findings(GOOD, sidekiq_timeout_s=20.0) == {}


def test_sidekiq_timeout_beyond_fly_maximum() -> None:
    found = findings(GOOD.replace("bundle exec sidekiq", "bundle exec sidekiq --timeout=600"))
    assert "lower Sidekiq's -t to 295" in found["kill-timeout-short"].fix


def test_kill_timeout_over_maximum() -> None:
    found = findings(GOOD.replace("kill_timeout = 30", 'kill_timeout = "10m"'))
    assert found["kill-timeout-too-long"].level is Level.ERROR


@pytest.mark.parametrize("signal", ["SIGQUIT", "SIGTSTP", "SIGKILL", "SIGUSR1"])
def test_kill_signal_sidekiq_does_not_shut_down_on(signal: str) -> None:
    found = findings(GOOD.replace('"SIGTERM"', f'"{signal}"'))
    f = found["kill-signal"]
    assert f.level is Level.ERROR and signal in f.message and "SIGTERM" in f.fix


@pytest.mark.parametrize("signal", ["SIGINT", "TERM", "sigterm"])
def test_shutdown_signals_are_fine(signal: str) -> None:
    assert findings(GOOD.replace('"SIGTERM"', f'"{signal}"')) == {}


def test_no_release_command() -> None:
    text = GOOD.replace(
        '  release_command = "quiesce quiet --strategy immediate --timeout 60"\n', ""
    )
    f = findings(text)["no-release-command"]
    assert f.level is Level.WARNING and "release_command" in f.fix


def test_release_command_without_quiet() -> None:
    found = findings(GOOD.replace("quiesce quiet --strategy immediate", "bin/rails db:migrate"))
    assert found["release-command-no-quiet"].level is Level.WARNING


def test_release_command_shell_operators_without_a_shell() -> None:
    found = findings(GOOD.replace('"quiesce quiet', '"bin/rails db:migrate && quiesce quiet'))
    assert found["release-command-shell"].level is Level.ERROR
    wrapped = GOOD.replace(
        '"quiesce quiet --strategy immediate --timeout 60"',
        "\"sh -c 'bin/rails db:migrate && quiesce quiet --timeout 60'\"",
    )
    assert findings(wrapped) == {}


def test_release_command_timeout_shorter_than_quiet_timeout() -> None:
    found = findings(GOOD.replace('"5m"', '"1m"'))
    f = found["release-command-timeout"]
    assert f.level is Level.ERROR and "60 s" in f.message
    assert 'release_command_timeout = "2m"' in f.fix
    # quiet's own default (30 s) counts when --timeout is absent
    no_flag = GOOD.replace(" --timeout 60", "").replace('"5m"', '"45s"')
    assert "30 s" in findings(no_flag)["release-command-timeout"].message


def test_release_command_timeout_none_and_no_wait() -> None:
    assert findings(GOOD.replace('"5m"', '"none"')) == {}
    assert findings(GOOD.replace('"5m"', '"40s"').replace("--timeout 60", "--no-wait")) == {}


def test_no_sidekiq_group_and_unknown_group() -> None:
    text = GOOD.replace('  worker = "bundle exec sidekiq"\n', "")
    assert findings(text)["no-sidekiq-group"].level is Level.WARNING
    assert findings(GOOD, groups=["jobs"])["unknown-group"].level is Level.ERROR


BLUEGREEN = GOOD.replace("immediate", "bluegreen")  # [deploy] and quiet's --strategy agree
WEB_CHECK = """
[http_service]
  internal_port = 3000
  processes = ["app"]
  [[http_service.checks]]
    path = "/up"
"""


def test_bluegreen_without_any_check() -> None:
    assert findings(BLUEGREEN)["bluegreen-no-checks"].level is Level.ERROR


def test_bluegreen_worker_group_without_checks() -> None:
    f = findings(BLUEGREEN + WEB_CHECK)["bluegreen-worker-no-checks"]
    assert f.level is Level.WARNING and 'processes = ["worker"]' in f.fix
    with_worker = BLUEGREEN + WEB_CHECK + '[checks.alive]\n  type = "tcp"\n  port = 7433\n'
    assert findings(with_worker) == {}  # a top-level check without processes covers all


def test_invalid_toml_and_durations() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_fly_toml("kill_timeout = = 3")
    with pytest.raises(ConfigError, match="not a duration"):
        read_deploy(parse_fly_toml('kill_timeout = "soon"'))
    assert parse_duration("1h30m") == 5400.0
    assert parse_duration(45) == 45.0
    assert parse_duration("none") is None


def test_quiesce_calls_skip_connection_option_values() -> None:
    (call,) = quiesce_calls("/usr/local/bin/quiesce -r redis://x:1/0 quiet --timeout=90 --all")
    assert call.command == "quiet"
    assert call.global_flags == ("-r",)
    assert call.flags == ("--timeout", "--all")
    assert call.value("--timeout") == "90"


# -- the CLI, with the live fleet -------------------------------------------------------------
@pytest.fixture
def fly_toml(tmp_path: Path) -> Path:
    path = tmp_path / "fly.toml"
    path.write_text(GOOD)
    return path


def test_cli_config_only(fly_toml: Path) -> None:
    code, out, _ = run("doctor", str(fly_toml))
    assert code == 0
    assert "checked fly.toml only" in out and "no problems found" in out


def test_cli_errors_exit_non_zero_with_one_line_each(fly_toml: Path) -> None:
    fly_toml.write_text(GOOD.replace("kill_timeout = 30", "kill_timeout = 5"))
    code, out, _ = run("doctor", str(fly_toml))
    assert code == 3
    lines = out.splitlines()
    assert lines[0].startswith("error: kill_timeout is 5 s") and "; fix: " in lines[0]
    assert lines[-1] == "doctor: 1 error, 0 warnings"


def test_cli_missing_file(tmp_path: Path) -> None:
    code, _, err = run("doctor", str(tmp_path / "nope.toml"))
    assert code == 2 and "cannot read" in err


def test_cli_live_fleet(fly_toml: Path, redis_url: str, raw: redis.Redis) -> None:
    image = "registry.fly.io/app:deployment-01"
    labelled = make_processes(1, seed=1, labels=(image,))
    unlabelled = make_processes(1, seed=2)
    embedded = make_processes(1, seed=3, embedded=True, labels=(image,))
    old = make_processes(1, seed=4, version="6.4.1", labels=(image,))
    processes = [*labelled, *unlabelled, *embedded, *old]
    fleet = simulated_fleet(redis_url, processes, beat_interval_s=60).start()
    try:
        entry = {"queue": "critical", "payload": json.dumps({"class": "LongJob"})}
        now = time.time()
        raw.hset(
            f"{labelled[0].identity}:work", "t1", json.dumps({**entry, "run_at": int(now - 10)})
        )
        raw.hset(
            f"{old[0].identity}:workers",
            "t2",
            json.dumps({**entry, "payload": json.dumps({"class": "Huge"}), "run_at": now - 900}),
        )
        code, out, _ = run("doctor", str(fly_toml), "-r", redis_url, "--json")
    finally:
        fleet.stop()
    assert code == 0, out
    doc = json.loads(out)
    assert doc["fleet_checked"] is True and doc["errors"] == 0
    by_code = {f["code"]: f for f in doc["findings"]}
    assert set(by_code) == {"embedded", "no-release-label", "job-longer-than-kill-timeout"}
    assert embedded[0].hostname in by_code["embedded"]["message"]
    assert unlabelled[0].hostname in by_code["no-release-label"]["message"]
    assert "1 process on 1 Machine" in by_code["no-release-label"]["message"]
    job = by_code["job-longer-than-kill-timeout"]["message"]
    assert job.startswith(f"Huge on {old[0].hostname} (queue critical) has run 9")
