"""Passwords in Redis URLs never reach stdout, stderr or the -v logs, whatever the URL.

Each planted password is two markers around a character that URL parsers treat
specially; neither marker may appear in any output. A raw '/', '?' or '#' in the
password cuts the URL's host part short: such a URL is refused (exit 2), masked.
"""

from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from quiesce.cli.app import app
from quiesce.settings import mask_url, validate_url
from tests.support import RedisServer
from tests.support.fly import fake_fly

__all__ = ["fake_fly"]  # the fixture, re-used from the Fly client tests

HEAD, TAIL = "pwQ7zX", "pwK4mY"
SECRET = f"{HEAD}/{TAIL}"  # the locked server's password: needs %2F in a URL
MARKERS = (HEAD, TAIL, "%2F" + TAIL)

runner = CliRunner()


@pytest.fixture(scope="module")
def locked() -> Iterator[RedisServer]:
    with RedisServer("--requirepass", SECRET) as server:
        yield server


def urls(port: int) -> dict[str, tuple[str, int]]:
    """name -> (URL, the exit code ``status`` gives)."""
    host = f"127.0.0.1:{port}"
    return {
        "raw slash": (f"redis://:{HEAD}/{TAIL}@{host}/0", 2),
        "raw question mark": (f"redis://:{HEAD}?{TAIL}@{host}/0", 2),
        "raw hash after a user and a numeric 'port'": (f"redis://default:8080#{HEAD}@{host}/0", 2),
        "raw hash": (f"rediss://user:{HEAD}#{TAIL}@{host}/0", 2),
        "unparseable port": (f"redis://:{HEAD}@127.0.0.1:99999999/0", 2),
        "no port after the colon": (f"redis://:{HEAD}@127.0.0.1:x{port}/0", 2),
        "unparseable ipv6": (f"redis://:{HEAD}@[::1/0", 2),
        "space in the password": (f"redis://:{HEAD} {TAIL}@{host}/0", 2),
        "wrong password": (f"redis://:{HEAD}@{host}/0", 5),
        "wrong password in the query": (f"redis://{host}/0?password={HEAD}", 5),
        "right password": (f"redis://default:{HEAD}%2F{TAIL}@{host}/0", 0),
    }


COMMANDS = {
    "quiet": (["quiet", "--timeout", "0.5", "--release", "r"], None),
    "quiet --best-effort": (["quiet", "--timeout", "0.5", "--best-effort"], 0),
    "quiet --json": (["quiet", "--timeout", "0.5", "--json"], None),
    "status": (["status"], None),
    "status --json": (["status", "--json"], None),
    "status --machines --json": (["status", "--machines", "--json"], None),
    "simulate": (["simulate", "--processes", "1", "--duration", "0.3", "--force"], None),
}


def assert_no_secret(text: str) -> None:
    for marker in MARKERS:
        assert marker not in text, text


def cli_env(source: str, url: str) -> tuple[list[str], list[str], dict[str, str]]:
    """(arguments before the command, after it, environment) for one way to pass a URL."""
    if source == "-r before":
        return ["-r", url], [], {}
    if source == "-r after":
        return [], ["-r", url], {}
    if source == "REDIS_URL":
        return [], [], {"REDIS_URL": url}
    return [], [], {"REDIS_PROVIDER": "MY_REDIS", "MY_REDIS": url}


@pytest.mark.parametrize("source", ["-r before", "-r after", "REDIS_URL", "REDIS_PROVIDER"])
@pytest.mark.parametrize("case", list(urls(0)))
def test_no_command_prints_the_password(
    case: str, source: str, locked: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, expected = urls(locked.port)[case]
    before, after, env = cli_env(source, url)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for label, (command, forced) in COMMANDS.items():
        result = runner.invoke(app, [*before, *command, *after])
        out = result.stdout + result.stderr
        assert_no_secret(out)
        assert "Traceback" not in out, (label, out)
        want = forced if forced is not None else expected
        assert result.exit_code == want, (label, out)
        if expected == 2:
            assert "quiesce: error: invalid Redis URL" in result.stderr, (label, out)
            assert "***" in result.stderr, (label, out)


@pytest.mark.parametrize("case", list(urls(0)))
def test_verbose_logs_never_print_the_password(case: str, locked: RedisServer) -> None:
    url, expected = urls(locked.port)[case]
    for command in (["quiet", "--timeout", "0.5"], ["status", "--json"]):
        done = subprocess.run(
            [sys.executable, "-m", "quiesce", "-v", "-r", url, *command],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == expected, done.stderr
        assert_no_secret(done.stdout + done.stderr)


def test_redis_provider_that_is_not_a_variable_name_is_not_echoed() -> None:
    for provider in (f"{HEAD}:{TAIL}@127.0.0.1", f"redis://:{HEAD}@127.0.0.1"):
        result = runner.invoke(app, ["status"], env={"REDIS_PROVIDER": provider})
        assert result.exit_code == 2
        assert_no_secret(result.stdout + result.stderr)
        assert "REDIS_PROVIDER must name a variable" in result.stderr


def test_cut_url_never_connects_to_the_host_before_the_cut() -> None:
    """``default:8080#...@host`` used to pass validation and connect to ``default:8080``."""
    from quiesce.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        validate_url(f"redis://default:8080#{HEAD}@127.0.0.1:6422/0")
    assert str(info.value).startswith("invalid Redis URL redis://***@127.0.0.1:6422/0: ")


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://user:pw@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:pw@host/0", "redis://:***@host/0"),
        ("redis://user@host/0", "redis://user@host/0"),
        ("redis://host/0?password=pw&db=1", "redis://host/0?password=***&db=1"),
        ("redis://:a/b@host:6379/0", "redis://***@host:6379/0"),
        ("redis://:secret/0", "redis://***/0"),
        ("unix://:pw@/tmp/redis.sock?db=0", "unix://:***@/tmp/redis.sock?db=0"),
        ("unix:///tmp/a@b.sock", "unix:///tmp/a@b.sock"),
        ("user:pw@host", "***@host"),
        ("", ""),
    ],
)
def test_mask_url_examples(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_mask_url_is_total_and_never_shows_a_password() -> None:
    rng = random.Random(20261126)
    specials = "/?#@:[]% \t\n\x1b\udcff%2F"
    for _ in range(5000):
        junk = "".join(rng.choice(specials) for _ in range(rng.randint(0, 4)))
        password = f"{HEAD}{junk}{TAIL}" if rng.random() < 0.8 else HEAD
        user = rng.choice(["", "default", "u:"])
        host = rng.choice(["h", "127.0.0.1:6379", "[::1]:1", "[::1", "h:port", ""])
        rest = rng.choice(["", "/0", "/0?db=1", "?password=" + HEAD, "#frag", "/x@y"])
        scheme = rng.choice(["redis://", "rediss://", "unix://", "", "redis:/", "//"])
        url = f"{scheme}{user}:{password}@{host}{rest}"
        masked = mask_url(url)
        assert isinstance(masked, str)
        for marker in (HEAD, TAIL):
            assert marker not in masked, (url, masked)


# -- every command, a planted Redis password and a planted Fly token ---------------------------

REDIS_PW = "rdsPw7Kq2Xv9"
FLY_TOKEN = "FlyV1 fm2_flyTok3nQ8wZ,fm2_flyTok3nR5yU"
PLANTED = (REDIS_PW, "flyTok3nQ8wZ", "flyTok3nR5yU")


def assert_clean(label: str, text: str) -> None:
    for marker in PLANTED:
        assert marker not in text, (label, marker, text)
    assert "Traceback" not in text or "quiesce: DEBUG" in text, (label, text)


@pytest.fixture(scope="module")
def guarded() -> Iterator[RedisServer]:
    with RedisServer("--requirepass", REDIS_PW) as server:
        yield server


def secret_env(server: RedisServer, fly_url: str) -> dict[str, str]:
    """The production shape: everything secret arrives through the environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "QUIESCE_", "FLY_"))}
    return {
        **base,
        "REDIS_URL": f"redis://default:{REDIS_PW}@127.0.0.1:{server.port}/0",
        "FLY_API_TOKEN": FLY_TOKEN,
        "FLY_APP_NAME": "secret-app",
        "FLY_API_HOSTNAME": fly_url,
    }


def run_all(env: dict[str, str], *args: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "quiesce", "-v", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    return done.returncode, done.stdout + done.stderr


def test_every_command_keeps_the_redis_password_and_the_fly_token_out(
    guarded: RedisServer, fake_fly: Any, tmp_path: Path
) -> None:
    from quiesce.sim.fly import machine_json
    from quiesce.sim.simulator import make_processes
    from tests.support import simulated_fleet
    from tests.support.processes import FLY_TOML, scrape_exporter

    admin = guarded.client(password=REDIS_PW)
    admin.flushall()
    processes = make_processes(2, seed=71)
    url = f"redis://default:{REDIS_PW}@127.0.0.1:{guarded.port}/0"
    fleet = simulated_fleet(url, processes, beat_interval_s=0.3)
    fleet.start()
    # The Fly API echoes the token in its errors (a proxy that does): it must still not show.
    listed = [machine_json(p.hostname) for p in processes]
    fake_fly.answer("GET", "/v1/apps/secret-app/machines", 200, listed)
    for machine in listed:  # recover reads each Machine again just before its restart
        fake_fly.answer("GET", f"/v1/apps/secret-app/machines/{machine['id']}", 200, machine)
    restart = f"/v1/apps/secret-app/machines/{processes[0].hostname}/restart"
    echo = {"error": f"{'x' * 150} token {FLY_TOKEN} and fm2_flyTok3nR5yU refused"}
    fake_fly.answer("POST", restart, 401, echo)
    env = secret_env(guarded, fake_fly.url)
    toml = tmp_path / "fly.toml"
    toml.write_text(FLY_TOML)
    try:
        outputs: dict[str, tuple[int, str]] = {}
        for args in (
            ("status",),
            ("status", "--json", "--jobs"),
            ("quiet", "--timeout", "30", "--release", "s1"),
            ("quiet", "--timeout", "30", "--release", "s2", "--json"),
            ("rejoin",),
            ("rejoin", "--json"),
            ("recover", "--after", "0.1s"),
            ("recover", "--after", "0.1s", "--json"),
            ("recover", "--after", "0.1s", "--yes", "--restart"),
            ("doctor", str(toml)),
            ("doctor", str(toml), "--json"),
            ("recover", "--after", "0.1s", "--yes", "--stop", "--json"),
        ):
            if args[0] == "recover":
                time.sleep(0.2)  # quiet for longer than --after
            outputs[" ".join(args)] = run_all(env, *args)
        for label, (_, text) in outputs.items():
            assert_clean(label, text)
        # They did run: with Redis, and with the Fly API (which refused the restart).
        assert outputs["status"][0] == 0, outputs["status"]
        assert outputs["rejoin --json"][0] == 7 and '"with_fly":true' in outputs["rejoin --json"][1]
        restart_code, restart_text = outputs["recover --after 0.1s --yes --restart"]
        assert restart_code == 8 and "refused the token" in restart_text, restart_text
        assert "***" in restart_text

        # With the postgres extra, a Postgres URL holding the password too (without it,
        # --postgres-url is refused at start-up and the exporter would not serve).
        has_pg = importlib.util.find_spec("psycopg") is not None
        pg = {"QUIESCE_POSTGRES_URL": f"postgresql://quiesce:{REDIS_PW}@127.0.0.1:1/db"}
        body, health, logs = scrape_exporter(url, env={**env, **(pg if has_pg else {})})
        if has_pg:
            assert "cannot read PostgreSQL (postgresql://quiesce:***@" in logs, logs
        assert health.startswith("200"), (health, logs)
        for label, text in (("/metrics", body), ("/healthz", health), ("exporter logs", logs)):
            assert_clean(label, text)
    finally:
        fleet.stop()
        fleet.client.close()
        admin.close()


def test_wrong_password_and_unreachable_errors_never_show_them(guarded: RedisServer) -> None:
    env = secret_env(guarded, "http://127.0.0.1:1")
    env["REDIS_URL"] = f"redis://default:{REDIS_PW}x@127.0.0.1:{guarded.port}/0"
    for args in (("status", "--json"), ("rejoin",), ("quiet",), ("doctor", "/nonexistent")):
        code, text = run_all(env, *args)
        assert code in (2, 5), (args, text)
        assert_clean(" ".join(args), text)
    env["REDIS_URL"] = f"redis://default:{REDIS_PW}@127.0.0.1:1/0"
    code, text = run_all(env, "rejoin")
    assert code == 4
    assert_clean("unreachable", text)


def test_repr_of_settings_targets_and_fly_objects_hides_the_secrets() -> None:
    from quiesce.adapters.fly import FlyClient, FlyConfig
    from quiesce.cli.options import AppContext
    from quiesce.settings import Tls, build_settings

    url = f"rediss://default:{REDIS_PW}@127.0.0.1:6390/0"
    settings = build_settings(urls=[url], environ={})
    config, _ = FlyConfig.from_env({"FLY_API_TOKEN": FLY_TOKEN, "FLY_APP_NAME": "a"})
    assert config is not None
    client = FlyClient(config)
    context = AppContext((url,), "", Tls(), 3.0, 5.0)
    try:
        for thing in (settings, settings.redis[0], config, client, context):
            assert_clean(type(thing).__name__, repr(thing))
            assert_clean(type(thing).__name__, str(thing))
        assert settings.redis[0].label == "rediss://default:***@127.0.0.1:6390/0"
    finally:
        client.close()


@pytest.mark.parametrize(
    "body",
    [
        {"error": f"{'x' * 180} {FLY_TOKEN}"},  # the token across the 200-character cut
        {"error": "fm2_flyTok3nR5yU is not valid"},  # one macaroon of the token, bare
        f"<html>{FLY_TOKEN.removeprefix('FlyV1 ')}</html>",
    ],
)
def test_a_fly_error_that_echoes_the_token_never_shows_it(body: Any) -> None:
    import httpx

    from quiesce.adapters.fly import FlyClient, FlyConfig
    from quiesce.errors import FlyProblem

    def reply(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(401, text=body)
        return httpx.Response(401, json=body)

    config = FlyConfig(app="a", token=FLY_TOKEN, base_url="http://fly.test")
    with (
        FlyClient(config, transport=httpx.MockTransport(reply)) as client,
        pytest.raises(FlyProblem) as info,
    ):
        client.list_machines()
    assert_clean("fly error", str(info.value))
    assert "flyTok" not in str(info.value)  # not even a prefix
    assert "refused the token" in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://u:{REDIS_PW}@127.0.0.1:1/db",
        f"postgres:/u:{REDIS_PW}@h/db",  # one slash: libpq reads it as key=value and quotes it
        f"postgresql://u:{REDIS_PW}@[::1/db",
        f"user=u password={REDIS_PW} host",
        f"postgresql://u:{REDIS_PW}@127.0.0.1:1/db?sslmode=bogus",
    ],
)
def test_postgres_errors_never_show_the_password(url: str) -> None:
    pytest.importorskip("psycopg")
    from quiesce.adapters.postgres import PostgresReader
    from quiesce.errors import QuiesceError

    reader = PostgresReader(url, timeout_s=1.0)
    with pytest.raises(QuiesceError) as info:
        reader.read_once()
    assert_clean("postgres", f"{info.value} {reader!r}")
    assert "cannot read PostgreSQL" in str(info.value)
