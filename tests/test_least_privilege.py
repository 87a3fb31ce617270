"""Every command under the two Redis ACL roles shipped in deploy/redis-acl.txt.

The users are created from the file's exact lines (the password placeholder replaced)
on the test's own redis-server, then every command runs against a simulated fleet.
Each permission of the release role is then taken away in turn: the release command
either stops before signalling anyone, in one line naming the permission (exit 5), or,
for the deploy mark (which is said, never fatal), finishes and says the mark was refused.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import redis

from quiesce.errors import ExitCode
from quiesce.sim.simulator import SimulatedFleet, make_processes
from tests.support import RedisServer, free_port, simulated_fleet

ROOT = Path(__file__).resolve().parent.parent
ACL_FILE = ROOT / "deploy" / "redis-acl.txt"
PLACEHOLDER = ">CHANGE-ME"
PASSWORD = "aclQ9pw"
WAIT_LIMIT_S = 60.0
"""Upper bound for anything this file waits for (a failure, never a measurement)."""


def acl_lines() -> dict[str, list[str]]:
    """User name -> the ``ACL SETUSER`` arguments, exactly as shipped."""
    roles = {}
    for line in ACL_FILE.read_text().splitlines():
        if line.startswith("ACL SETUSER "):
            words = shlex.split(line)
            roles[words[2]] = words
    assert set(roles) == {"quiesce-read", "quiesce-release"}, roles
    return roles


def namespaced(words: list[str], namespace: str) -> list[str]:
    """The README's rule for a redis-namespace: the prefix after every ``~``."""
    return [w.replace("~", f"~{namespace}:") for w in words]


def create_user(
    server: RedisServer, words: list[str], *, name: str | None = None, drop: str = ""
) -> str:
    """The user from one shipped line (``drop``: one word left out); returns its URL."""
    args = [w.replace(PLACEHOLDER, f">{PASSWORD}") for w in words if w != drop]
    assert len(args) == len(words) - (1 if drop else 0), drop
    if name is not None:
        args[2] = name
    client = server.client()
    try:
        client.execute_command(*args)  # type: ignore[no-untyped-call]
    finally:
        client.close()
    return f"redis://{args[2]}:{PASSWORD}@127.0.0.1:{server.port}/0"


def cli(
    url: str, *args: str, env: Mapping[str, str] | None = None, namespace: str = ""
) -> tuple[int, str, str]:
    """The real CLI in its own process (-v: every log line is checked too)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "QUIESCE_", "FLY_"))}
    extra = ["--namespace", namespace] if namespace else []
    done = subprocess.run(
        [sys.executable, "-m", "quiesce", "-v", "--redis-url", url, *extra, *args],
        cwd=ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=WAIT_LIMIT_S,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def scrape_exporter(
    url: str, *options: str, env: Mapping[str, str] | None = None, namespace: str = ""
) -> tuple[str, str, str]:
    """``quiesce exporter`` as deployed: (the /metrics body, /healthz, its stderr logs)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "QUIESCE_", "FLY_"))}
    port = free_port()
    extra = ["--namespace", namespace] if namespace else []
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "quiesce",
            "-v",
            "-r",
            url,
            *extra,
            *options,
            "exporter",
            "--listen",
            f"127.0.0.1:{port}",
        ],
        cwd=ROOT,
        env={**base, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + WAIT_LIMIT_S
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                    body = r.read().decode()
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the exporter did not serve: {proc.communicate()}")
                time.sleep(0.05)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
                health = f"{r.status} {r.read().decode()}"
        except urllib.error.HTTPError as exc:
            health = f"{exc.code} {exc.read().decode()}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=WAIT_LIMIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    return body, health, err


FLY_TOML = """\
app = "acl-app"
kill_signal = "SIGTERM"
kill_timeout = 60

[deploy]
  release_command = "quiesce quiet --timeout 60s"
  release_command_timeout = "5m"

[processes]
  worker = "bundle exec sidekiq -t 25"
"""


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


@pytest.fixture
def fleet(server: RedisServer) -> Iterator[tuple[SimulatedFleet, redis.Redis]]:
    admin = server.client(decode_responses=True)
    admin.flushall()
    sim: SimulatedFleet = simulated_fleet(
        server.url, make_processes(3, seed=41), beat_interval_s=0.3
    )
    sim.start()
    yield sim, admin
    sim.stop()
    sim.client.close()
    admin.close()


def signals_pushed(admin: redis.Redis) -> dict[str, int]:
    found: dict[str, int] = {}
    for key in admin.scan_iter(match="*-signals"):
        found[str(key)] = int(admin.llen(key))
    return found


def own_keys(admin: redis.Redis) -> list[str]:
    return sorted(str(k) for k in admin.scan_iter(match="*quiesce:*"))


Commands = tuple[tuple[str, ...], ...]
NEVER: Commands = (
    ("KEYS", "*"),
    ("CONFIG", "GET", "maxmemory"),
    ("CLIENT", "LIST"),
    ("CLIENT", "KILL", "ID", "1"),
    ("FLUSHALL",),
    ("DEL", "processes"),
    ("SREM", "processes", "a"),
    ("HSET", "host:1:abc", "quiet", "true"),
    ("LPUSH", "queue:default", "{}"),
    ("RPOP", "queue:default"),
    ("SET", "other", "x"),
    ("EVAL", "return 1", "0"),
    ("ACL", "WHOAMI"),
)
BOTH: Commands = (
    ("SSCAN", "processes", "0"),
    ("HMGET", "any:host:1", "quiet"),
    ("LRANGE", "x-signals", "0", "-1"),
    ("GET", "quiesce:deploy:latest"),
    ("INFO", "server"),
    ("HGETALL", "quiesce:deploy:ledger:app:my-app"),
    # Only when the target is empty, one page: is a fleet registered under another namespace?
    ("SCAN", "0", "MATCH", "*processes", "COUNT", "1000"),
)
RELEASE_ONLY: Commands = (
    ("LPUSH", "host:1:abc-signals", "TSTP"),
    ("EXPIRE", "host:1:abc-signals", "60"),
    ("SET", "quiesce:deploy:latest", "{}", "EX", "10"),
    ("HSET", "quiesce:deploy:ledger:app:my-app", "20261126T072500Z-abc123", "{}"),
    ("HDEL", "quiesce:deploy:ledger:app:my-app", "20261112T072500Z-def456"),
    ("EXPIRE", "quiesce:deploy:ledger:app:my-app", "1209600"),
    ("SET", "deploylock-v42", "x", "NX", "EX", "60"),
    ("HSETNX", "20261126-marks", "stamp", "v42"),
    ("EXPIRE", "20261126-marks", "60"),
    ("MULTI",),
)
RELEASE_NEVER: Commands = (
    ("SET", "host:1:abc-signals", "x"),  # each write only on its own keys
    ("LPUSH", "quiesce:deploy:latest", "x"),
    ("EXPIRE", "host:1:abc", "60"),  # never a heartbeat's TTL
    ("EXPIRE", "processes", "60"),
    ("HSETNX", "host:1:abc", "quiet", "true"),
    ("HSETNX", "x-marks", "a", "b"),  # marks are <YYYYMMDD>-marks
    ("HSET", "processes-history", "a", "b"),  # the ledger's writes only on quiesce:deploy:*
    ("HDEL", "host:1:abc", "quiet"),
)


def test_the_roles_refuse_what_quiesce_never_needs(server: RedisServer) -> None:
    """Redis's own verdict (``ACL DRYRUN``) on what each shipped role may run."""
    roles = acl_lines()
    for words in roles.values():
        create_user(server, words)
    admin = server.client(decode_responses=True)

    def allowed(user: str, command: tuple[str, ...]) -> bool:
        reply = admin.execute_command("ACL", "DRYRUN", user, *command)  # type: ignore[no-untyped-call]
        return str(reply) == "OK"

    try:
        for user in roles:
            assert [c for c in NEVER if allowed(user, c)] == [], user
            assert [c for c in BOTH if not allowed(user, c)] == [], user
        assert [c for c in RELEASE_ONLY if allowed("quiesce-read", c)] == []
        assert [c for c in RELEASE_ONLY if not allowed("quiesce-release", c)] == []
        assert [c for c in RELEASE_NEVER if allowed("quiesce-release", c)] == []
    finally:
        admin.close()


def test_every_command_works_under_its_role(
    server: RedisServer, fleet: tuple[SimulatedFleet, redis.Redis], tmp_path: Path
) -> None:
    sim, admin = fleet
    roles = acl_lines()
    read = create_user(server, roles["quiesce-read"])
    release = create_user(server, roles["quiesce-release"])

    for args in (("status",), ("status", "--json"), ("status", "--jobs"), ("status", "--machines")):
        code, out, err = cli(read, *args)
        assert code == 0, (args, out, err)
        assert "3" in out, (args, out)
    code, out, err = cli(read, "status", "--json", "--jobs")
    assert code == 0, err
    assert sum(len(m["processes"]) for m in json.loads(out)["machines"]) == 3

    code, out, err = cli(release, "quiet", "--timeout", "30", "--release", "v42")
    assert code == 0, out + err
    assert "3 confirmed" in out and "deploy mark" in out and "written" in out
    assert set(signals_pushed(admin).values()) <= {0, 1} and all(p.quiet for p in sim.processes)
    assert "quiesce:deploy:latest" in own_keys(admin)
    assert admin.hlen(next(iter(admin.scan_iter(match="????????-marks")))) == 1

    code, out, err = cli(read, "rejoin", "--json", "--no-fly")
    assert code == ExitCode.NOT_WHOLE, out + err  # all quiet, none back: a verdict, not an error
    assert json.loads(out)["counts"]["quiet-idle"] == 3

    time.sleep(0.2)  # quiet for longer than --after
    code, out, err = cli(read, "recover", "--after", "0.1s")
    assert code == 0, out + err
    assert "dry run" in out and out.count("stranded ") == 3

    body, health, logs = scrape_exporter(read)
    assert health.startswith("200"), (health, logs)
    assert "quiesce_processes" in body and "quiesce_up 1.0" in body
    assert "ACL" not in logs and "NOPERM" not in logs  # CLIENT LIST is refused quietly

    toml = tmp_path / "fly.toml"
    toml.write_text(FLY_TOML)
    code, out, err = cli(read, "doctor", str(toml), "--json")
    assert code in (0, ExitCode.NOT_CONFIRMED), out + err
    assert json.loads(out)["fleet_checked"] is True

    code, out, err = cli(release, "recover", "--after", "0.1s", "--yes", "--stop")
    assert code == 0, out + err
    assert out.count("stopped (TERM sent)") == 3
    deadline = time.monotonic() + WAIT_LIMIT_S
    while not all(p.stopped for p in sim.processes):
        assert time.monotonic() < deadline, "the processes never took TERM"
        time.sleep(0.05)


def test_a_namespaced_fleet_under_the_namespaced_roles(server: RedisServer) -> None:
    admin = server.client(decode_responses=True)
    admin.flushall()
    roles = acl_lines()
    read = create_user(server, namespaced(roles["quiesce-read"], "myapp"), name="ns-read")
    release = create_user(server, namespaced(roles["quiesce-release"], "myapp"), name="ns-release")
    plain = create_user(server, roles["quiesce-release"], name="plain-release")
    sim: SimulatedFleet = simulated_fleet(
        server.url, make_processes(2, seed=42), namespace="myapp", beat_interval_s=0.3
    )
    sim.start()
    try:
        code, out, err = cli(read, "status", "--json", namespace="myapp")
        assert code == 0, err
        code, out, err = cli(plain, "quiet", "--release", "v1", namespace="myapp")
        assert code == ExitCode.REDIS_REFUSED, out + err  # the un-prefixed role reads nothing
        code, out, err = cli(
            release, "quiet", "--timeout", "30", "--release", "v1", namespace="myapp"
        )
        assert code == 0, out + err
        assert "myapp:quiesce:deploy:latest" in own_keys(admin)
        code, out, err = cli(read, "rejoin", "--no-fly", namespace="myapp")
        assert code == ExitCode.NOT_WHOLE, out + err
    finally:
        sim.stop()
        sim.client.close()
        admin.close()


RELEASE_REQUIRED = ("+sscan", "+hmget", "+get", "+sismember", "+pttl", "+llen", "+multi", "+exec")
"""Release-role words whose loss stops ``quiet`` before any signal."""
RELEASE_SELECTORS = ("(+lpush", "(+set")
"""The selectors the push transaction needs: losing one aborts the whole MULTI."""
MARK_ONLY = ("(+hsetnx",)
"""Only the deploy mark needs it: said, never fatal."""
OPTIONAL = ("+time", "+info", "+ping", "+select", "+smembers", "+zcount", "+lindex", "+scan")
"""Optional (degrade) or needed by other commands only."""


def drop_selector(words: list[str], opening: str) -> list[str]:
    """The line without the selector that starts with ``opening``."""
    out, skipping = [], False
    for word in words:
        if word == opening:
            skipping = True
        if not skipping:
            out.append(word)
        if skipping and word.endswith(")"):
            skipping = False
    assert len(out) < len(words), opening
    return out


def test_the_lists_above_cover_every_word_of_the_release_role() -> None:
    words = acl_lines()["quiesce-release"]
    perms = {w for w in words if w.startswith("+")} | {w for w in words if w.startswith("(")}
    covered = {*RELEASE_REQUIRED, *RELEASE_SELECTORS, *MARK_ONLY, *OPTIONAL, "+lrange", "+hgetall"}
    covered |= {"+expire", "+hset", "+hdel"}  # inside the selectors, with their keys
    assert perms == covered, perms ^ covered


@pytest.mark.parametrize("missing", [*RELEASE_REQUIRED, *RELEASE_SELECTORS])
def test_quiet_without_one_permission_signals_nothing_and_names_it(
    missing: str, server: RedisServer, fleet: tuple[SimulatedFleet, redis.Redis]
) -> None:
    _, admin = fleet
    words = acl_lines()["quiesce-release"]
    if missing.startswith("("):
        words = drop_selector(words, missing)
        missing_word = ""
    else:
        missing_word = missing
    url = create_user(server, words, name="short", drop=missing_word)
    code, out, err = cli(url, "quiet", "--timeout", "5", "--release", "v9")
    assert code == ExitCode.REDIS_REFUSED, out + err
    line = [x for x in err.splitlines() if x.startswith("quiesce: error:")]
    assert len(line) == 1, err
    assert f"grant {missing.lstrip('(')}" in line[0], line
    assert not any(signals_pushed(admin).values()), signals_pushed(admin)
    assert own_keys(admin) == []


@pytest.mark.parametrize(
    ("pattern", "key"), [("~*-signals)", "-signals"), ("~quiesce:deploy:*", "quiesce:deploy:")]
)
def test_quiet_without_one_key_pattern_signals_nothing_and_names_the_key(
    pattern: str, key: str, server: RedisServer, fleet: tuple[SimulatedFleet, redis.Redis]
) -> None:
    _, admin = fleet
    words = [
        w.replace(pattern, "~elsewhere:*" + (")" if ")" in pattern else ""))
        for w in (acl_lines()["quiesce-release"])
    ]
    url = create_user(server, words, name="short-keys")
    code, out, err = cli(url, "quiet", "--timeout", "5", "--release", "v9")
    assert code == ExitCode.REDIS_REFUSED, out + err
    line = [x for x in err.splitlines() if x.startswith("quiesce: error:")]
    assert len(line) == 1 and "may not use the key" in line[0] and key in line[0], err
    assert "nothing was signalled" in line[0]
    assert not any(signals_pushed(admin).values()) and own_keys(admin) == []


def test_quiet_without_the_mark_permission_says_so_and_succeeds(
    server: RedisServer, fleet: tuple[SimulatedFleet, redis.Redis]
) -> None:
    words = drop_selector(acl_lines()["quiesce-release"], "(+hsetnx")
    url = create_user(server, words, name="nomark")
    code, out, err = cli(url, "quiet", "--timeout", "30", "--release", "v9")
    assert code == 0, out + err
    assert "deploy mark not written: Redis ACL: the user may not run HSETNX" in out + err
    assert "3 confirmed" in out


def test_time_info_and_client_list_refused_degrade_quietly(
    server: RedisServer, fleet: tuple[SimulatedFleet, redis.Redis]
) -> None:
    sim, _ = fleet
    words = acl_lines()["quiesce-release"]
    url = create_user(server, [w for w in words if w not in ("+time", "+info")], name="bare")
    code, out, err = cli(url, "status", "--json")
    assert code == 0, err
    code, out, err = cli(url, "quiet", "--timeout", "30", "--release", "v9")
    assert code == 0, out + err
    assert "ACL" not in out + err
    body, health, logs = scrape_exporter(url)
    assert health.startswith("200") and "quiesce_processes" in body, (health, logs)
    assert "ACL" not in logs
    assert all(p.quiet for p in sim.processes)


@pytest.mark.parametrize(
    ("command", "missing"),
    [
        (("status",), "+hmget"),
        (("rejoin", "--no-fly"), "+get"),
        (("recover", "--after", "1s"), "+lrange"),
        (("status", "--jobs"), "+hgetall"),
        (("exporter",), "+smembers"),
    ],
)
def test_reads_without_one_permission_name_it(
    command: tuple[str, ...],
    missing: str,
    server: RedisServer,
    fleet: tuple[SimulatedFleet, redis.Redis],
) -> None:
    url = create_user(server, acl_lines()["quiesce-read"], name="short-read", drop=missing)
    if command == ("exporter",):
        _, health, logs = scrape_exporter(url)
        assert health.startswith("503") and f"grant {missing}" in health, health
        assert f"grant {missing}" in logs
        return
    code, out, err = cli(url, *command)
    assert code == ExitCode.REDIS_REFUSED, out + err
    line = [x for x in err.splitlines() if x.startswith("quiesce: error:")]
    assert len(line) == 1 and f"grant {missing}" in line[0], err


def test_an_empty_fleet_under_the_read_role_degrades_the_hints_quietly(
    server: RedisServer,
) -> None:
    """The empty-fleet hints ``SCAN`` for a namespaced ``processes``: the role has no SCAN
    (it would list every key name), so status says the fleet is empty and nothing more."""
    admin = server.client(decode_responses=True)
    admin.flushall()
    admin.sadd("myapp:processes", "h:1:x")
    admin.close()
    read = create_user(server, acl_lines()["quiesce-read"])
    code, out, err = cli(read, "status")
    assert code == 0, out + err
    assert "no Sidekiq processes registered" in out
    assert "ACL" not in out + err and "NOPERM" not in out + err


def test_recover_stop_under_the_read_role_is_refused_in_one_line(
    server: RedisServer, fleet: tuple[SimulatedFleet, redis.Redis]
) -> None:
    sim, _ = fleet
    read = create_user(server, acl_lines()["quiesce-read"])
    release = create_user(server, acl_lines()["quiesce-release"])
    code, out, err = cli(release, "quiet", "--timeout", "30", "--release", "v1")
    assert code == 0, out + err
    time.sleep(0.2)
    code, out, err = cli(read, "recover", "--after", "0.1s", "--yes", "--stop")
    assert code == ExitCode.REDIS_REFUSED, out + err
    line = [x for x in err.splitlines() if x.startswith("quiesce: error:")]
    assert len(line) == 1 and "grant +lpush" in line[0] and "nothing was stopped" in line[0], err
    assert not any(p.stopped for p in sim.processes)
    code, out, err = cli(read, "quiet", "--dry-run", "--release", "v2")
    assert code == ExitCode.REDIS_REFUSED and "grant +multi" in err, out + err
