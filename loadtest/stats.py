"""Latency statistics of one run.

Percentiles are nearest-rank (numpy's ``inverted_cdf``): every reported figure, p99.9 included, is a
latency some request actually had, never a value interpolated between two requests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
REJECTED = "RESOURCE_EXHAUSTED"  # what an overloaded service answers at once


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The smallest value with at least ``q`` percent of the values at or below it."""
    if not sorted_values:
        raise ValueError("no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0-100, got {q}")
    # Rounded first so that e.g. 99.9% of 1000 is exactly rank 999, not 999.0000000000001 -> 1000.
    rank = math.ceil(round(q / 100.0 * len(sorted_values), 9))
    return sorted_values[max(rank, 1) - 1]


@dataclass(frozen=True)
class LatencySummary:
    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float

    @classmethod
    def of(cls, latencies_s: Sequence[float]) -> LatencySummary:
        """Seconds in, milliseconds out; an empty run gives zeros with count 0."""
        if not latencies_s:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        ms = sorted(x * 1000.0 for x in latencies_s)
        p50, p90, p99, p999 = (percentile(ms, q) for q in PERCENTILES)
        return cls(len(ms), sum(ms) / len(ms), p50, p90, p99, p999, ms[-1])


@dataclass(frozen=True)
class Sample:
    """One request, on the ``time.perf_counter`` clock. ``intended`` is when the schedule meant it to
    go; in a closed loop that is when it was sent."""

    intended: float
    sent: float
    done: float
    code: str  # gRPC status name: OK, INVALID_ARGUMENT, UNAVAILABLE, ...
    warmup: bool = False

    @property
    def latency(self) -> float:
        return self.done - self.intended

    @property
    def send_lag(self) -> float:
        return self.sent - self.intended


@dataclass(frozen=True)
class RunSummary:
    """What one run (one concurrency or one arrival rate) measured, warm-up excluded."""

    mode: str  # closed | open
    load: float  # concurrency (closed) or offered requests/s (open)
    sent: int  # measured requests, every one of which is counted below as OK or as an error
    ok: int
    errors: dict[str, int]  # gRPC status name -> count
    warmup_sent: int
    window_s: float
    throughput_rps: float  # OK responses per second in the measurement window (goodput)
    latency: LatencySummary  # OK responses only: fast failures must not flatter the figures
    # Refusals by an overloaded service (RESOURCE_EXHAUSTED), apart: how many, and how fast they came.
    rejection_latency: LatencySummary
    send_lag_mean_ms: float  # how late the generator sent against its schedule (open loop)
    send_lag_max_ms: float

    @property
    def rejected(self) -> int:
        return self.errors.get(REJECTED, 0)

    @classmethod
    def of(
        cls, mode: str, load: float, samples: Sequence[Sample], window_start: float, window_end: float
    ) -> RunSummary:
        """Throughput counts OK responses that completed inside the window (warm-up requests still in
        flight at its start included), which is the steady-state rate whatever stopped the run."""
        measured = [s for s in samples if not s.warmup]
        ok = [s for s in measured if s.code == "OK"]
        errors: dict[str, int] = {}
        for s in measured:
            if s.code != "OK":
                errors[s.code] = errors.get(s.code, 0) + 1
        window = max(window_end - window_start, 1e-9)
        completed = sum(1 for s in samples if s.code == "OK" and window_start <= s.done <= window_end)
        lags = [s.send_lag * 1000.0 for s in measured]
        return cls(
            mode=mode,
            load=load,
            sent=len(measured),
            ok=len(ok),
            errors=dict(sorted(errors.items())),
            warmup_sent=len(samples) - len(measured),
            window_s=window,
            throughput_rps=completed / window,
            latency=LatencySummary.of([s.latency for s in ok]),
            rejection_latency=LatencySummary.of([s.latency for s in measured if s.code == REJECTED]),
            send_lag_mean_ms=sum(lags) / len(lags) if lags else 0.0,
            send_lag_max_ms=max(lags, default=0.0),
        )
