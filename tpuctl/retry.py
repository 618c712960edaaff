"""The one retry loop: run an action again after a failure that may pass, waiting as told between tries.

The TPU API client waits as the server's RetryInfo says (else backs off), opening an SSH connection and
reconnecting a log follower back off; each says which failures are worth another try, how many tries
or how long in all.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable


def backoff_s(attempt: int, first_s: float, max_s: float, jitter: float = 0.0) -> float:
    """`first_s` after the first failed attempt, doubling after each one up to `max_s`, times 1 ± `jitter`."""
    delay = min(first_s * 2 ** (attempt - 1), max_s)
    return delay * random.uniform(1 - jitter, 1 + jitter) if jitter else delay


def retrying[T](action: Callable[[], T], retryable: Callable[[Exception], bool],
                delay_s: Callable[[Exception, int], float], attempts: int | None = None,
                deadline_s: float | None = None, on_failure: Callable[[Exception], None] | None = None) -> T:
    """`action()`, tried again after each retryable failure until `attempts` tries or `deadline_s` seconds
    are spent; then the last failure propagates, as does at once any failure that is not retryable.

    `on_failure` sees every retryable failure (to reset a connection, say); `delay_s(failure, attempt)`
    is the wait before the next try.
    """
    started = time.monotonic()
    for attempt in itertools.count(1):
        try:
            return action()
        except Exception as exc:
            if not retryable(exc):
                raise
            if on_failure is not None:
                on_failure(exc)
            if attempt == attempts or (deadline_s is not None and time.monotonic() - started > deadline_s):
                raise
            time.sleep(delay_s(exc, attempt))
    raise AssertionError("itertools.count never ends")
