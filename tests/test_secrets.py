"""Passwords in Redis URLs never reach stdout, stderr or the -v logs, whatever the URL.

Each planted password is two markers around a character that URL parsers treat
specially; neither marker may appear in any output. A raw '/', '?' or '#' in the
password cuts the URL's host part short: such a URL is refused (exit 2), masked.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from quiesce.cli import app
from quiesce.settings import mask_url, validate_url
from tests.support import RedisServer

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
