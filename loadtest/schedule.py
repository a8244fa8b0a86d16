"""Open-loop arrival schedules: when each request is meant to be sent.

An open-loop run sends on this schedule whether or not earlier requests have finished, and each
latency is measured from the request's intended send time. A closed-loop tool that waits for a slow
response before sending the next request hides the queueing a real, independent stream of users
would have suffered behind it (coordinated omission).
"""

from __future__ import annotations

import enum
import math

import numpy as np


class Arrival(str, enum.Enum):
    CONSTANT = "constant"  # evenly spaced, 1/rate apart
    POISSON = "poisson"  # exponential gaps with mean 1/rate: independent users


def arrival_offsets(
    rate: float, duration_s: float, max_requests: int, arrival: Arrival = Arrival.CONSTANT, seed: int = 0
) -> list[float]:
    """Intended send times in seconds from the start, all before ``duration_s`` and at most
    ``max_requests`` of them."""
    if rate <= 0:
        raise ValueError(f"arrival rate must be > 0 requests/s, got {rate}")
    if duration_s <= 0 or max_requests < 1:
        return []
    expected = min(max_requests, math.ceil(round(rate * duration_s, 9)))
    if arrival is Arrival.CONSTANT:
        offsets = np.arange(expected, dtype=np.float64) / rate
    else:
        rng = np.random.default_rng(seed)
        # Draw well past the expected count so the window is filled, then cut at the duration.
        gaps = rng.exponential(1.0 / rate, size=int(expected * 1.5) + 16)
        offsets = np.concatenate(([0.0], np.cumsum(gaps)[:-1]))
    return [float(t) for t in offsets[offsets < duration_s][:max_requests]]
