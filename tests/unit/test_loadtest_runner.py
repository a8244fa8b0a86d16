"""The load generator's loops against fake targets whose behaviour is known exactly."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from matteserve.loadtest.runner import Bounds, closed_loop, open_loop
from matteserve.loadtest.schedule import Arrival, arrival_offsets

INPUTS = [b"a", b"b", b"bad"]


class QueueServer:
    """One request served at a time for ``service_s`` each, like a single model instance; an input
    equal to b'bad' fails at once with INVALID_ARGUMENT."""

    def __init__(self, service_s: float) -> None:
        self.name = "fake queue server"
        self.service_s = service_s
        self.lock = asyncio.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.received: list[bytes] = []

    async def send(self, image: bytes) -> str:
        self.received.append(image)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if image == b"bad":
                return "INVALID_ARGUMENT"
            async with self.lock:
                await asyncio.sleep(self.service_s)
            return "OK"
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        pass


class BlockingSender:
    """A client that blocks the whole event loop for ``block_s`` on every send: the generator itself
    stalls, the way a slow serialiser or a GC pause would stall it."""

    name = "blocking sender"

    def __init__(self, block_s: float) -> None:
        self.block_s = block_s

    async def send(self, image: bytes) -> str:
        time.sleep(self.block_s)
        return "OK"

    async def close(self) -> None:
        pass


def test_constant_arrivals_are_evenly_spaced_and_bounded_by_duration_and_count() -> None:
    assert arrival_offsets(10, 1.0, 1000) == pytest.approx([i / 10 for i in range(10)])
    assert len(arrival_offsets(10, 1.0, 4)) == 4
    assert arrival_offsets(10, 0.0, 100) == []


def test_poisson_arrivals_have_the_asked_rate_are_reproducible_and_stay_in_the_window() -> None:
    offsets = arrival_offsets(1000, 10.0, 1_000_000, Arrival.POISSON, seed=3)
    assert offsets == arrival_offsets(1000, 10.0, 1_000_000, Arrival.POISSON, seed=3)
    assert len(offsets) == pytest.approx(10_000, rel=0.05)
    gaps = np.diff(offsets)
    assert gaps.mean() == pytest.approx(1 / 1000, rel=0.05)
    # Exponential gaps: the standard deviation equals the mean (evenly spaced would give 0).
    assert gaps.std() == pytest.approx(gaps.mean(), rel=0.1)
    assert offsets[0] == 0.0
    assert all(0 <= t < 10.0 for t in offsets)
    assert offsets == sorted(offsets)


def test_arrival_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="> 0"):
        arrival_offsets(0, 1.0, 10)


async def test_closed_loop_keeps_exactly_the_asked_concurrency_and_counts_errors_by_code() -> None:
    server = QueueServer(service_s=0.005)
    result = await closed_loop(server, INPUTS, concurrency=3, bounds=Bounds(10.0, 40, warmup_s=0))
    s = result.summary()
    assert server.max_in_flight == 3
    # It stops issuing at 40 OK; the two other workers' requests then in flight still finish.
    assert 40 <= s.ok <= 42
    assert s.sent == len(server.received)
    # Inputs go round-robin in issue order, so every third request carried the bad one.
    assert s.errors == {"INVALID_ARGUMENT": s.sent // 3}
    assert s.ok + s.sent // 3 == s.sent


async def test_closed_loop_stops_at_its_duration_and_leaves_warmup_out_of_the_figures() -> None:
    server = QueueServer(service_s=0.02)
    start = time.perf_counter()
    result = await closed_loop(server, [b"a"], concurrency=2, bounds=Bounds(0.5, 100_000, warmup_s=0.3))
    elapsed = time.perf_counter() - start
    s = result.summary()
    assert elapsed < 0.3 + 0.5 + 1.0  # one service time past the deadline, with room for a busy machine
    assert s.warmup_sent > 0
    assert s.sent + s.warmup_sent == len(server.received)
    assert all(x.sent >= result.window_start for x in result.samples if not x.warmup)
    assert all(x.sent < result.window_start for x in result.samples if x.warmup)


async def test_open_loop_sends_on_schedule_whatever_the_responses_do() -> None:
    server = QueueServer(service_s=0.1)  # 10 requests/s at most
    result = await open_loop(server, [b"a"], rate=20, bounds=Bounds(1.0, 1000, warmup_s=0))
    samples = sorted(result.samples, key=lambda x: x.intended)
    assert len(samples) == 20
    # The sends kept to the 20/s schedule although the server fell behind...
    assert max(x.send_lag for x in samples) < 0.05
    # ...so the queue shows in the latencies: request i waits for the i before it, ~0.1 + 0.05 i s.
    expected = [0.1 + 0.05 * i for i in range(20)]
    assert [x.latency for x in samples] == pytest.approx(expected, abs=0.08)


async def test_open_loop_latency_counts_the_time_a_stalled_generator_failed_to_send() -> None:
    # The generator blocks 0.1 s per send but is asked for 20/s: request i goes out at ~0.1 i instead
    # of 0.05 i. Timed from the actual send every request would look like 0.1 s (coordinated omission);
    # timed from the intended send the stall is visible and grows.
    result = await open_loop(BlockingSender(0.1), [b"a"], rate=20, bounds=Bounds(1.0, 1000, warmup_s=0))
    samples = sorted(result.samples, key=lambda x: x.intended)
    assert len(samples) == 20
    assert max(x.done - x.sent for x in samples) < 0.3
    assert samples[-1].latency > 0.8
    assert result.summary().latency.p99_ms > 800


async def test_open_loop_requests_waiting_for_an_in_flight_slot_count_that_wait() -> None:
    server = QueueServer(service_s=0.1)
    result = await open_loop(server, [b"a"], rate=20, bounds=Bounds(0.5, 1000, warmup_s=0), max_in_flight=1)
    assert server.max_in_flight == 1
    last = max(result.samples, key=lambda x: x.intended)
    assert last.send_lag > 0.3  # 10 requests at 0.1 s each through one slot, the last meant for 0.45 s
    assert last.latency >= last.send_lag + 0.09


async def test_open_loop_excludes_warmup_and_is_bounded_by_the_count_of_ok_responses() -> None:
    server = QueueServer(service_s=0.001)
    result = await open_loop(server, INPUTS, rate=40, bounds=Bounds(2.0, 10, warmup_s=0.25))
    s = result.summary()
    assert s.warmup_sent == 10
    # Every third input is bad: the 10th OK is the 15th request, and nothing is sent after it.
    assert (s.ok, s.sent) == (10, 15)
    assert s.sent + s.warmup_sent == len(server.received)
    assert s.ok + sum(s.errors.values()) == s.sent


class SheddingServer:
    """Serves one request at a time in ``service_s``; any request arriving meanwhile is refused at
    once with RESOURCE_EXHAUSTED, as an overloaded gateway does."""

    name = "shedding server"

    def __init__(self, service_s: float) -> None:
        self.service_s = service_s
        self.busy = False

    async def send(self, image: bytes) -> str:
        if self.busy:
            await asyncio.sleep(0)  # a refusal still crosses the network
            return "RESOURCE_EXHAUSTED"
        self.busy = True
        try:
            await asyncio.sleep(self.service_s)
            return "OK"
        finally:
            self.busy = False

    async def close(self) -> None:
        pass


async def test_fast_refusals_do_not_use_up_the_cap_and_are_reported_apart() -> None:
    server = SheddingServer(service_s=0.02)
    result = await closed_loop(server, [b"a"], concurrency=20, bounds=Bounds(5.0, 20, warmup_s=0))
    s = result.summary()
    # Thousands of refusals came back while 20 requests were served; the run went on until those 20.
    assert s.ok == 20
    assert s.rejected > 100
    assert s.errors == {"RESOURCE_EXHAUSTED": s.rejected}
    assert s.rejection_latency.count == s.rejected
    assert s.rejection_latency.p99_ms < s.latency.p50_ms
