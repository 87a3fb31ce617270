"""Text from Redis never drives the terminal: a hostile fleet, read through a real pty.

Whoever can write to Sidekiq's Redis controls hostnames, tags, labels, queue names and
signal lists. Printed raw, ``ESC]52;...BEL`` writes the clipboard, ``ESC[2J`` clears the
screen and ``ESC[8m`` hides the FAILED line. quiesce's only control sequence is its own
progress line on stderr, ``\\r ESC[2K`` before each "waiting: ..." and once at the end.
"""

from __future__ import annotations

import errno
import json
import os
import pty
import re
import select
import subprocess
import sys
import termios
import time

import pytest
import redis

from quiesce.text import safe
from tests.support import RedisServer

OSC52 = "\x1b]52;c;aGFja2Vk\x07"  # clipboard := "hacked"
CLEAR = "\x1b[2J"
HIDE = "\x1b[8m"
C1_CSI = "\u009b31m"  # U+009B: a UTF-8 terminal obeys it as ESC [
NOT_UTF8 = "@@FF@@"  # replaced by a raw 0xff byte when written

EVIL_ID = f"evil{CLEAR}:1:aaaaaaaaaaaa"
PLAIN_ID = "plainhost:2:bbbbbbbbbbbb"
BYTE_ID = b"byte\xffhost:3:cccccccccccc"

# Code points a terminal acts on: C0 but tab and newline, DEL, C1.
FORBIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]")
# Notices (one line each, escaped) may come first; then the live line, then its erasure.
PROGRESS = re.compile(
    r"(?:quiesce: [^\r\n]*\n)*(?:\r\x1b\[2Kwaiting: [0-9a-z ,]+)*(?:\r\x1b\[2K)?(?P<rest>.*)",
    re.DOTALL,
)


def info(hostname: str, **extra: object) -> bytes:
    body = {
        "hostname": hostname,
        "started_at": time.time() - 100,
        "pid": 1,
        "tag": f"tag\x07{OSC52}",
        "concurrency": 5,
        "queues": [f"q{HIDE}", "default"],
        "labels": [f"lab{CLEAR}", C1_CSI],
        "identity": "x",
        "version": "7.3.10",
        **extra,
    }
    return json.dumps(body).encode().replace(NOT_UTF8.encode(), b"\xff")


def load_hostile_fleet(client: redis.Redis) -> None:
    now = str(time.time())
    rows: dict[bytes, dict[str | bytes, str | bytes]] = {
        EVIL_ID.encode(): {"info": info(f"host{OSC52}\r{HIDE}")},
        PLAIN_ID.encode(): {"info": info(f"plain{NOT_UTF8}", version=f"7{HIDE}.x")},
        BYTE_ID: {"info": info(f"byte{NOT_UTF8}host"), "busy": "1\x1b[8m"},
    }
    for identity, fields in rows.items():
        client.sadd("processes", identity)
        base: dict[str | bytes, str | bytes] = {"beat": now, "quiet": "false", "busy": "0"}
        for field, value in {**base, **fields}.items():
            client.hset(identity, field, value)
        client.expire(identity, 60)
    client.lpush(f"{EVIL_ID}-signals", f"TSTP\x1b]0;title\x07{CLEAR}")
    client.sadd("processes", b"ghost\x1b[8m\xfe:9:dddddddddddd")  # a dead member


def run_in_pty(*args: str) -> tuple[int, str, str]:
    """quiesce with stdout and stderr on two terminals; everything it wrote, undecoded
    bytes refused (a terminal in UTF-8 mode would act on U+0080-U+009F)."""
    masters, slaves = zip(pty.openpty(), pty.openpty(), strict=True)
    for slave in slaves:
        attrs = termios.tcgetattr(slave)
        attrs[1] &= ~termios.OPOST  # no "\n" -> "\r\n": every "\r" read is quiesce's own
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
    proc = subprocess.Popen(
        [sys.executable, "-m", "quiesce", *args],
        stdin=subprocess.DEVNULL,
        stdout=slaves[0],
        stderr=slaves[1],
        # Wide enough for every column: tables drop columns that do not fit the terminal.
        env={**os.environ, "COLUMNS": "250"},
    )
    for slave in slaves:
        os.close(slave)
    chunks: dict[int, bytes] = dict.fromkeys(masters, b"")
    open_fds = list(masters)
    while open_fds:
        ready, _, _ = select.select(open_fds, [], [], 60)
        assert ready, "quiesce wrote nothing for 60 s"
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except OSError as exc:  # EIO: the child closed its end
                assert exc.errno == errno.EIO
                data = b""
            if data:
                chunks[fd] += data
            else:
                open_fds.remove(fd)
                os.close(fd)
    code = proc.wait(timeout=60)
    return code, chunks[masters[0]].decode(), chunks[masters[1]].decode()


def assert_inert(text: str) -> None:
    found = FORBIDDEN.search(text)
    assert found is None, f"{found.group()!r} reached the terminal: {text!r}"


HOST_SHOWN = "host\\x1b]52;c;aGFja2Vk\\x07\\r\\x1b[8m"
IDENTITY_SHOWN = "evil\\x1b[2J:1:aaaaaaaaaaaa"


@pytest.mark.parametrize(
    ("args", "expected_code", "visible"),
    [
        (["status"], 0, HOST_SHOWN),
        (["status", "--machines"], 0, "byte\\xffhost"),
        (["status", "--expect", "running"], 3, "byte\\xffhost:3:cccccccccccc (unreadable)"),
        (["quiet", "--dry-run", "--all"], 3, IDENTITY_SHOWN),
        (["quiet", "--timeout", "1", "--release", f"rel{OSC52}"], 3, "rel\\x1b]52;c;"),
        (["-v", "quiet", "--timeout", "1", "--no-mark"], 3, IDENTITY_SHOWN),
    ],
)
def test_hostile_fleet_never_reaches_the_terminal(
    args: list[str], expected_code: int, visible: str, redis_url: str, redis_server: RedisServer
) -> None:
    load_hostile_fleet(redis_server.client())
    code, out, err = run_in_pty("-r", redis_url, *args)
    assert code == expected_code, out + err
    assert_inert(out)
    progress = PROGRESS.fullmatch(err)
    assert progress is not None
    assert_inert(progress.group("rest"))
    assert "Traceback" not in out + err
    assert visible in out + err  # escaped, and shown


def test_deploy_record_and_signals_from_redis_are_escaped(
    redis_url: str, redis_server: RedisServer
) -> None:
    load_hostile_fleet(redis_server.client())
    code, _, _ = run_in_pty("-r", redis_url, "quiet", "--no-wait", "--release", f"r{HIDE}1")
    assert code == 3  # the unreadable processes
    code, out, err = run_in_pty("-r", redis_url, "status")
    assert code == 0, err
    assert_inert(out + err)
    assert "release r\\x1b[8m1" in out  # the latest deploy, as read back from Redis
    assert "tag\\x07\\x1b]52;c;" in out  # the TAG/LABELS column (18 wide)
    assert "TSTP\\x1b]0;title\\x07\\x1b[2J" in out  # the pending signal names


def test_status_json_escapes_everything(redis_url: str, redis_server: RedisServer) -> None:
    load_hostile_fleet(redis_server.client())
    code, out, err = run_in_pty("-r", redis_url, "status", "--json")
    assert code == 0, err
    assert_inert(out + err)
    hosts = {p["hostname"] for m in json.loads(out)["machines"] for p in m["processes"]}
    assert f"host{OSC52}\r{HIDE}" in hosts  # json.dumps escaped it; nothing lost


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain text, é, 東京", "plain text, é, 東京"),
        (OSC52, "\\x1b]52;c;aGFja2Vk\\x07"),
        ("a\r\nb\tc\x00\x7f", "a\\r\\nb\\tc\\x00\\x7f"),
        (C1_CSI, "\\x9b31m"),
        ("byte \udcff", "byte \\xff"),
        ("lone \ud800", "lone \\ud800"),
        ("bidi \u202eevil", "bidi \\u202eevil"),
    ],
)
def test_safe(raw: str, shown: str) -> None:
    assert safe(raw) == shown
    assert safe(safe(raw)) == safe(raw)
