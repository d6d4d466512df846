"""Retry delays: exponential, capped, with jitter.

The cap is low on purpose (seconds, not minutes): after an outage the broker
or camera is usually back soon, and a client sleeping 30 s past that point is
an outage of its own. The jitter spreads a fleet that lost the broker at the
same moment, so it does not reconnect in one burst.
"""

from __future__ import annotations

import random

# The jittered delay lies in [(1 - JITTER) * nominal, nominal].
JITTER = 0.5


def backoff_delay(attempt: int, min_delay: float, max_delay: float, chance: float | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry).

    The nominal delay doubles from ``min_delay`` per attempt up to ``max_delay``;
    the result is that, shortened by a random part of up to ``JITTER`` of it
    (the first retry too: that is when a whole fleet retries at once). So it
    never exceeds ``max_delay`` and is never below half of ``min_delay``.
    ``chance`` (in [0, 1)) fixes the random draw, for tests.

    # Arguments
        attempt: how many retries have already failed since the last success.
        min_delay, max_delay: bounds in seconds, ``0 < min_delay <= max_delay``.
        chance: the uniform draw; None draws one.
    # Returns
        The delay in seconds.
    """
    if not 0 < min_delay <= max_delay:
        raise ValueError(f"need 0 < min_delay <= max_delay, got {min_delay} and {max_delay}")
    draw = random.random() if chance is None else chance
    nominal = min(max_delay, min_delay * 2 ** min(max(attempt, 0), 32))  # 2**32 * min_delay is past any cap
    return nominal * (1 - JITTER * draw)
