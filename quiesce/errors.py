"""The one exception tree, and the exit codes the CLI maps it to.

    QuiesceError                    exit 1 (unexpected; a bug if you see it)
    ├── ConfigError                 exit 2: bad option, bad URL, missing file
    ├── RedisProblem
    │   ├── RedisUnavailable        exit 4: refused, unreachable, timed out, went away
    │   └── RedisRefused            exit 5: wrong password, TLS mismatch, ACL denies a command
    └── ProtocolError               exit 6: Redis holds data that is not Sidekiq's shape

Per-process problems (malformed heartbeat JSON, an unknown Sidekiq version) are not
exceptions: they are recorded on the process and reported, so one bad process never
stops the rest of the fleet from being read or quieted.

Adapters translate library exceptions (redis-py) into this tree with ``raise ... from``;
messages are one line, name the cause, and never contain a password.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Documented exit statuses (``quiesce --help`` and the README list them)."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    NOT_CONFIRMED = 3
    REDIS_UNAVAILABLE = 4
    REDIS_REFUSED = 5
    PROTOCOL = 6
    INTERRUPTED = 130


class QuiesceError(Exception):
    exit_code: ExitCode = ExitCode.INTERNAL


class ConfigError(QuiesceError):
    exit_code = ExitCode.USAGE


class RedisProblem(QuiesceError):
    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(f"{message} ({url})")
        self.reason = message
        self.url = url


class RedisUnavailable(RedisProblem):
    exit_code = ExitCode.REDIS_UNAVAILABLE


class RedisRefused(RedisProblem):
    exit_code = ExitCode.REDIS_REFUSED


class ProtocolError(RedisProblem):
    exit_code = ExitCode.PROTOCOL
