"""The one exception tree, and the exit codes the CLI maps it to.

    QuiesceError                    exit 1 (unexpected; a bug if you see it)
    ├── ConfigError                 exit 2: bad option, bad URL, missing file, no such db,
    │                               a wrong target (quiet: the fleet is elsewhere)
    ├── Interrupted                 exit 130: Ctrl-C or TERM (quiesce.runs.quiet)
    ├── RedisProblem                (carries the masked URL)
    │   ├── RedisUnavailable        exit 4: refused, unreachable, timed out, went away
    │   ├── RedisRefused            exit 5: wrong password, TLS mismatch, ACL, maxmemory
    │   └── ProtocolError           exit 6: Redis holds data that is not Sidekiq's shape
    ├── FlyProblem                  exit 8: the Fly Machines API failed or refused us
    │   ├── FlyUnavailable          timed out, 5xx or 429 after the bounded retries
    │   └── FlyRefused              401/403 (bad token), 404 (wrong app or Machine)
    └── ConnectionLimit             exit 9: bluegreen preflight (quiesce.model.preflight)

``quiesce rejoin`` exits 7 (``NOT_WHOLE``) when the fleet is not whole: a verdict, not
an exception.

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
    NOT_WHOLE = 7
    FLY_API = 8
    CONNECTION_LIMIT = 9
    INTERRUPTED = 130
    BROKEN_PIPE = 141

    @property
    def description(self) -> str:
        """One line for ``quiesce --help`` and the README."""
        return _EXIT_DESCRIPTIONS[self]


_EXIT_DESCRIPTIONS = {
    ExitCode.OK: "success: every target confirmed quiet or gone",
    ExitCode.USAGE: "usage or configuration error",
    ExitCode.NOT_CONFIRMED: "processes left unconfirmed at the deadline (quiet), not in the "
    "--expect state (status), or errors found (doctor)",
    ExitCode.REDIS_UNAVAILABLE: "Redis unreachable: refused, timed out, unknown host, went away",
    ExitCode.REDIS_REFUSED: "Redis refused us: wrong password, TLS mismatch, ACL denies a command",
    ExitCode.PROTOCOL: "Redis holds data that is not Sidekiq's shape",
    ExitCode.NOT_WHOLE: "rejoin: the fleet is not whole (some expected Machine has no new "
    "process) at the --timeout deadline, or now without --wait",
    ExitCode.FLY_API: "Fly Machines API error: bad token, wrong app, unavailable; recover: a "
    "restart failed",
    ExitCode.CONNECTION_LIMIT: "quiet --max-connections-ratio: the bluegreen peak would pass "
    "the connection limit; nothing was signalled",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
    ExitCode.BROKEN_PIPE: "the output's reader went away (quiesce status | head), as for "
    "any tool stopped by SIGPIPE",
    ExitCode.INTERNAL: "internal error (a bug: please report it)",
}


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


class FlyProblem(QuiesceError):
    """One line naming the cause; never the token."""

    exit_code = ExitCode.FLY_API

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class FlyUnavailable(FlyProblem):
    pass


class FlyRefused(FlyProblem):
    pass


class ConnectionLimit(QuiesceError):
    """The bluegreen preflight refused the deploy: nothing was signalled."""

    exit_code = ExitCode.CONNECTION_LIMIT
