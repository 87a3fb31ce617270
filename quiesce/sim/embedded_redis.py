"""A private Redis for ``quiesce demo``: never the machine's own.

A real ``redis-server`` when one is on PATH (a free 127.0.0.1 port, no persistence, a
temporary directory, its own session so a Ctrl-C reaches quiesce, which stops it), else
fakeredis's TCP server in a thread (fakeredis is optional: ``pip install fakeredis``).
Either is stopped by ``close()``, which waits for it: nothing is left running.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from quiesce.errors import ConfigError

Kind = Literal["auto", "redis-server", "fakeredis"]

START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pings(port: int) -> bool:
    """One raw ``PING`` (no client library): is the server up and answering?"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _die_with_parent() -> Callable[[], None] | None:
    """Linux: the server gets TERM if quiesce is killed outright (no cleanup ran). The
    library lookup happens here, in the parent: the child only makes the one call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, int(signal.SIGTERM))


class EmbeddedRedis:
    """A running private Redis; ``url`` and ``description`` say what and where."""

    def __init__(self, url: str, description: str) -> None:
        self.url = url
        self.description = description

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> EmbeddedRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RedisServerProcess(EmbeddedRedis):
    def __init__(self, binary: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="quiesce-demo-redis-")
        self.proc: subprocess.Popen[bytes] | None = None
        try:
            port = self._start(binary)
        except BaseException:
            self.close()
            raise
        super().__init__(f"redis://127.0.0.1:{port}/0", f"redis-server on 127.0.0.1:{port}")

    def _start(self, binary: str) -> int:
        for _ in range(3):  # the free port may be taken between the probe and the bind
            port = free_port()
            self.proc = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", self.dir, "--protected-mode", "yes"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                # The demo starts its Redis before any thread of its own.
                preexec_fn=_die_with_parent(),
            )  # fmt: skip
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline and self.proc.poll() is None:
                if _pings(port):
                    return port
                time.sleep(0.02)
            self._stop()
        raise ConfigError(f"redis-server ({binary}) did not start on a free port")

    def _stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        self._stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class FakeRedisServer(EmbeddedRedis):
    def __init__(self) -> None:
        try:
            import fakeredis
        except ImportError:
            raise ConfigError(
                "the demo needs a Redis of its own: install redis-server "
                "(apt-get install redis-server) or fakeredis (pip install fakeredis)"
            ) from None
        server_class: Any = getattr(fakeredis, "TcpFakeServer", None)
        if server_class is None:
            raise ConfigError("this fakeredis has no TCP server: pip install 'fakeredis>=2.26'")
        self.server = server_class(("127.0.0.1", 0), server_version=(7, 2))
        port = int(self.server.server_address[1])
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="demo-fakeredis", daemon=True
        )
        self.thread.start()
        version = getattr(fakeredis, "__version__", "?")
        super().__init__(f"redis://127.0.0.1:{port}/0", f"fakeredis {version} on 127.0.0.1:{port}")

    def close(self) -> None:
        if not self.thread.is_alive():
            return
        self.server.shutdown()  # also tells each connection's handler thread to end
        self.server.server_close()  # joins them
        self.thread.join(timeout=5)


def start_embedded_redis(kind: Kind = "auto") -> EmbeddedRedis:
    binary = shutil.which("redis-server")
    if kind == "redis-server" and binary is None:
        raise ConfigError("no redis-server on PATH")
    if binary is not None and kind != "fakeredis":
        return RedisServerProcess(binary)
    return FakeRedisServer()
