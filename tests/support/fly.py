"""A local HTTP server answering the Fly Machines API with scripted replies in the
documented shapes (``tests.support.verdicts.machine_json``): for the Fly client's tests
and the rejoin/recover integration tests."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest


class FakeFly(http.server.ThreadingHTTPServer):
    """Answers each request with the next scripted reply for its path (the last one
    repeats) and records what it was asked."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: dict[str, list[tuple[int, Any, dict[str, str], float]]] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []

    def answer(
        self,
        method: str,
        path: str,
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self.script.setdefault(f"{method} {path}", []).append(
            (status, body, headers or {}, delay_s)
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FakeFly

    def _reply(self) -> None:
        path = self.path.split("?", 1)[0]
        self.server.requests.append((self.command, self.path, dict(self.headers)))
        replies = self.server.script.get(f"{self.command} {path}")
        if not replies:
            status, body, delay = 404, {"error": "not found"}, 0.0
            headers: dict[str, str] = {}
        else:
            status, body, headers, delay = replies.pop(0) if len(replies) > 1 else replies[0]
        if delay:
            time.sleep(delay)
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("fly-request-id", "req-1")
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and left

    do_GET = _reply
    do_POST = _reply
    do_DELETE = _reply

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_fly() -> Iterator[FakeFly]:
    server = FakeFly()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
