"""Retry policies, all of them, in one place: bounded, backed off, transient errors only."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import tenacity

log = logging.getLogger(__name__)

REDIS_ATTEMPTS = 3
MAX_BACKOFF_S = 1.2


def redis_retry(
    is_transient: Callable[[BaseException], bool], *, deadline: float | None = None
) -> tenacity.Retrying:
    """For idempotent Redis calls (reads, and pushes of the idempotent TSTP).

    Three attempts with 0.2-1 s jittered backoff: with the connect and read timeouts this
    bounds a dead server to a few seconds, never a hang. With a ``deadline``
    (``time.monotonic``), no attempt starts after it: a wait that must end on time is
    late by at most the one attempt already under way.
    """
    stop: tenacity.stop.stop_base = tenacity.stop_after_attempt(REDIS_ATTEMPTS)
    if deadline is not None:
        stop = stop | _past(deadline)
    return tenacity.Retrying(
        stop=stop,
        wait=tenacity.wait_exponential(multiplier=0.2, max=1.0)
        + tenacity.wait_random(0, MAX_BACKOFF_S - 1.0),
        retry=tenacity.retry_if_exception(is_transient),
        before_sleep=tenacity.before_sleep_log(log, logging.INFO),
        reraise=True,
    )


class _past(tenacity.stop.stop_base):
    """Stop when the next attempt, after the longest backoff, could start past the deadline
    (older tenacity computes the backoff only after asking whether to stop)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return time.monotonic() + MAX_BACKOFF_S >= self.deadline
