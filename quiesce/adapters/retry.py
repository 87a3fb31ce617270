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


FLY_ATTEMPTS = 4
FLY_MAX_WAIT_S = 10.0
"""The longest a ``Retry-After`` (or the backoff) may hold one Fly call back."""


class _fly_wait(tenacity.wait.wait_base):
    """Honour the server's ``Retry-After`` (capped), else jittered exponential backoff."""

    def __init__(self, retry_after: Callable[[BaseException], float | None]) -> None:
        self.retry_after = retry_after
        self.backoff = tenacity.wait_exponential(multiplier=0.5, max=4.0) + tenacity.wait_random(
            0, 0.5
        )

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        asked = self.retry_after(exc) if exc is not None else None
        if asked is not None:
            return min(max(asked, 0.0), FLY_MAX_WAIT_S)
        return float(self.backoff(retry_state))


def fly_retry(
    is_transient: Callable[[BaseException], bool],
    retry_after: Callable[[BaseException], float | None],
    *,
    attempts: int = FLY_ATTEMPTS,
    deadline: float | None = None,
) -> tenacity.Retrying:
    """For Fly Machines API calls that are safe to repeat (GETs, and a restart of a Machine
    that hosts only quiet processes): timeouts, 408, 429 and 5xx. Four attempts, each wait
    at most ``FLY_MAX_WAIT_S``: a dead API costs well under a minute, never a hang. With a
    ``deadline`` (``time.monotonic``) no backoff runs past it and no retry is decided after
    it; the caller bounds each attempt's own timeout by the time left."""
    stop: tenacity.stop.stop_base = tenacity.stop_after_attempt(attempts)
    wait: tenacity.wait.wait_base = _fly_wait(retry_after)
    if deadline is not None:
        stop = stop | _over(deadline)
        wait = _capped(wait, deadline)
    return tenacity.Retrying(
        stop=stop,
        wait=wait,
        retry=tenacity.retry_if_exception(is_transient),
        before_sleep=tenacity.before_sleep_log(log, logging.INFO),
        reraise=True,
    )


class _over(tenacity.stop.stop_base):
    """Stop once the deadline has passed (the wait before the next attempt is capped to it
    by ``_capped``, so an attempt that starts is always before the deadline)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return time.monotonic() >= self.deadline


class _capped(tenacity.wait.wait_base):
    def __init__(self, inner: tenacity.wait.wait_base, deadline: float) -> None:
        self.inner, self.deadline = inner, deadline

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return max(0.0, min(float(self.inner(retry_state)), self.deadline - time.monotonic()))
