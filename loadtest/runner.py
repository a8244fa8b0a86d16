"""Drive a target in closed loop (fixed concurrency) or open loop (scheduled arrivals).

Every run is bounded twice, by a duration and by a count of OK responses, and stops by itself: no
request is issued after either bound, and the ones in flight finish within the target's own timeout.
The count is of OK responses, not of requests: an overloaded service refuses requests in
milliseconds, and a cap on requests would be spent on refusals before the run measured anything.
Requests issued during the warm-up are sent and awaited like the others but excluded from the figures.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from matteserve.errors import MatteserveError
from matteserve.loadtest.schedule import Arrival, arrival_offsets
from matteserve.loadtest.stats import RunSummary, Sample

logger = logging.getLogger(__name__)

# The open loop must not hold an unbounded number of requests when the target stalls; a request
# that waits for a slot still has its latency counted from its intended send time.
DEFAULT_MAX_IN_FLIGHT = 256


class Target(Protocol):
    """Something requests are sent to; ``send`` returns the gRPC status name (``OK`` on success)."""

    name: str

    async def send(self, image: bytes) -> str: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Bounds:
    duration_s: float
    max_requests: int  # measured OK responses; refusals and errors do not use it up
    warmup_s: float = 1.0

    def __post_init__(self) -> None:
        if self.duration_s <= 0 or self.max_requests < 1 or self.warmup_s < 0:
            raise MatteserveError("a run needs --duration > 0, --max-requests >= 1 and --warmup >= 0")


@dataclass(frozen=True)
class RunResult:
    mode: str
    load: float
    samples: list[Sample]
    window_start: float
    window_end: float

    def summary(self) -> RunSummary:
        return RunSummary.of(self.mode, self.load, self.samples, self.window_start, self.window_end)


class _Inputs:
    """Hands out the inputs in a fixed round-robin order, so which input the i-th request carried is
    known from i alone."""

    def __init__(self, inputs: Sequence[bytes]) -> None:
        if not inputs:
            raise ValueError("no inputs to send")
        self.inputs = inputs
        self.issued = 0

    def next(self) -> bytes:
        data = self.inputs[self.issued % len(self.inputs)]
        self.issued += 1
        return data


def _window_end(samples: list[Sample], deadline: float) -> float:
    measured = [s.done for s in samples if not s.warmup]
    return min(deadline, max(measured)) if measured else deadline


async def closed_loop(target: Target, inputs: Sequence[bytes], concurrency: int, bounds: Bounds) -> RunResult:
    """``concurrency`` workers, each sending its next request as soon as its previous one returns."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    source = _Inputs(inputs)
    samples: list[Sample] = []
    start = time.perf_counter()
    warm_end = start + bounds.warmup_s
    deadline = warm_end + bounds.duration_s
    measured_ok = 0

    async def worker() -> None:
        nonlocal measured_ok
        while (sent := time.perf_counter()) < deadline and measured_ok < bounds.max_requests:
            warmup = sent < warm_end
            code = await target.send(source.next())
            samples.append(Sample(sent, sent, time.perf_counter(), code, warmup))
            measured_ok += code == "OK" and not warmup

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return RunResult("closed", concurrency, samples, warm_end, _window_end(samples, deadline))


async def open_loop(
    target: Target,
    inputs: Sequence[bytes],
    rate: float,
    bounds: Bounds,
    arrival: Arrival = Arrival.CONSTANT,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    seed: int = 0,
) -> RunResult:
    """Send on an arrival schedule whatever the responses do; each latency runs from the request's
    intended send time, so a stall shows up in every request scheduled behind it."""
    warmup_offsets = arrival_offsets(rate, bounds.warmup_s, 1 << 31, arrival, seed) if bounds.warmup_s else []
    measured_offsets = arrival_offsets(rate, bounds.duration_s, 1 << 31, arrival, seed + 1)
    schedule = [(t, True) for t in warmup_offsets] + [(bounds.warmup_s + t, False) for t in measured_offsets]
    source = _Inputs(inputs)
    slots = asyncio.Semaphore(max_in_flight)
    samples: list[Sample] = []
    measured_ok = 0

    async def one(intended: float, image: bytes, warmup: bool) -> None:
        nonlocal measured_ok
        try:
            sent = time.perf_counter()
            code = await target.send(image)
            samples.append(Sample(intended, sent, time.perf_counter(), code, warmup))
            measured_ok += code == "OK" and not warmup
        finally:
            slots.release()

    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    for offset, warmup in schedule:
        intended = start + offset
        if (delay := intended - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        await slots.acquire()
        if measured_ok >= bounds.max_requests:
            slots.release()
            break
        tasks.append(asyncio.create_task(one(intended, source.next(), warmup)))
    await asyncio.gather(*tasks)
    warm_end = start + bounds.warmup_s
    return RunResult("open", rate, samples, warm_end, _window_end(samples, warm_end + bounds.duration_s))
