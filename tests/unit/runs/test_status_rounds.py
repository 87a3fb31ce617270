"""--watch's loop: one round without it, rounds until interrupted with it, never faster
than the floor interval."""

from __future__ import annotations

import pytest

from quiesce.runs.status import MIN_INTERVAL_S, rounds


def test_one_round_without_watch() -> None:
    shown: list[int] = []
    assert rounds(lambda: 7, shown.append, watch=False, interval_s=5.0) == 7
    assert shown == [7]


def test_watch_repeats_until_interrupted_and_sleeps_at_least_the_floor() -> None:
    shown: list[int] = []
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        if len(slept) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rounds(lambda: len(shown), shown.append, watch=True, interval_s=0.0, sleep=sleep)
    assert shown == [0, 1, 2] and slept == [MIN_INTERVAL_S] * 3
