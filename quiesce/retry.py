"""Retry policies, all of them, in one place: bounded, backed off, transient errors only."""

from __future__ import annotations

import logging
from collections.abc import Callable

import tenacity

log = logging.getLogger(__name__)

REDIS_ATTEMPTS = 3


def redis_retry(is_transient: Callable[[BaseException], bool]) -> tenacity.Retrying:
    """For idempotent Redis calls (reads, and pushes of the idempotent TSTP).

    Three attempts with 0.2-1 s jittered backoff: with the connect and read timeouts this
    bounds a dead server to a few seconds, never a hang.
    """
    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(REDIS_ATTEMPTS),
        wait=tenacity.wait_exponential(multiplier=0.2, max=1.0) + tenacity.wait_random(0, 0.2),
        retry=tenacity.retry_if_exception(is_transient),
        before_sleep=tenacity.before_sleep_log(log, logging.INFO),
        reraise=True,
    )
