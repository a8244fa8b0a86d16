"""Overload on a real gateway and Triton, driven by the project's load generator (loadtest.runner).

Capacity is measured in the same test, on the same machine, just before the overload: goodput under
overload is asserted as a share of it, never as an absolute rate. Bounds are generous (a shared
2-core machine); docs/loadtest.md has the commands that measure the real figures.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from matteserve import contract
from matteserve.build.builder import build
from matteserve.gateway import GatewayProcess
from matteserve.loadtest import triton_metrics
from matteserve.loadtest.runner import Bounds, closed_loop, open_loop
from matteserve.loadtest.schedule import Arrival
from matteserve.loadtest.stats import RunSummary
from matteserve.loadtest.targets import GatewayTarget
from matteserve.options import OutputFormat
from matteserve.tritonserver import TritonServer
from matteserve.zoo import get_spec

from ..conftest import TEST_MAX_BATCH, closing, gateway_fixture, gateway_metric, start_gateway, start_triton  # type: ignore[import-not-found]


async def measure_closed(
    gw: GatewayProcess, inputs: list[bytes], concurrency: int, ok: int, fmt: OutputFormat = OutputFormat.MASK
) -> RunSummary:
    """A closed loop until ``ok`` OK responses (at most 120 s): counted, not timed, so a slow or busy
    machine makes the test longer, not wrong."""
    async with closing(GatewayTarget(gw.target, fmt, timeout=120.0)) as target:
        result = await closed_loop(target, inputs, concurrency, Bounds(120.0, ok, warmup_s=0))
    return result.summary()


async def warm_up(gw: GatewayProcess, inputs: list[bytes]) -> None:
    """Triton's first requests load onnxruntime and fill caches: keep them out of every figure."""
    await measure_closed(gw, inputs, concurrency=TEST_MAX_BATCH, ok=TEST_MAX_BATCH)


# Capacity is measured at concurrency 2 * TEST_MAX_BATCH, all of it admitted: a closed loop whose
# refused workers retry at once would spin on refusals and take the CPU from Triton.
overload_gw = gateway_fixture("overload", queue_budget_s=1.5, min_in_flight=2 * TEST_MAX_BATCH)


def matting_computed(triton: TritonServer) -> float:
    """Images the model has computed so far (Triton's own count)."""
    snapshot = triton_metrics.scrape(triton.cfg.metrics_url)
    assert snapshot is not None
    return snapshot.get(("nv_inference_count", contract.MATTING), 0.0)


async def test_under_five_times_its_capacity_the_service_keeps_its_goodput_and_refuses_the_rest_fast(
    triton: TritonServer, overload_gw: GatewayProcess, make_photo: Callable[..., bytes]
) -> None:
    inputs = [make_photo(384, 384, name) for name in ("astronaut", "chelsea", "coffee", "rocket")]
    await warm_up(overload_gw, inputs)
    capacity = await measure_closed(overload_gw, inputs, concurrency=2 * TEST_MAX_BATCH, ok=24)
    assert not capacity.errors
    # Short deadlines: twice what an image takes when the service is just saturated.
    deadline = max(3.0, 2 * capacity.latency.p50_ms / 1000)

    # Five times the capacity, arriving whatever the answers do, for long enough to see ~30 answered.
    seconds = max(8.0, 30 / capacity.throughput_rps)
    computed_before = matting_computed(triton)
    async with closing(GatewayTarget(overload_gw.target, OutputFormat.MASK, timeout=deadline)) as target:
        result = await open_loop(
            target, inputs, 5 * capacity.throughput_rps, Bounds(seconds, 100_000, warmup_s=1.0), Arrival.POISSON
        )
    s = result.summary()
    computed = matting_computed(triton) - computed_before
    # Measured again after: on a shared machine the capacity drifts, and the test is about collapse.
    after = await measure_closed(overload_gw, inputs, concurrency=2 * TEST_MAX_BATCH, ok=16)
    capacity = min(capacity, after, key=lambda c: c.throughput_rps)
    answered = sum(1 for x in result.samples if x.code == "OK")
    print(f"capacity {capacity.throughput_rps:.2f}/s, deadline {deadline:.1f} s; at 5x: {s}; computed {computed}")
    assert s.throughput_rps >= 0.8 * capacity.throughput_rps, "goodput collapsed under overload"
    # 80% of a true 5x overload is beyond capacity; a capacity measured low on a busy machine makes it
    # less (47% was seen with the machine busy during the capacity run), so the bound only proves shedding.
    assert s.rejected > 0.2 * s.sent, "a 5x overload must be shed"
    # What is refused is refused at once (the bound is loose for a machine shared with Triton) ...
    assert s.rejection_latency.p99_ms < 250
    # ... and what is admitted is answered within its deadline: no collapse into DEADLINE_EXCEEDED
    # (a few can miss it when the machine slows down after the deadline was chosen).
    assert s.errors.get("DEADLINE_EXCEEDED", 0) <= 0.1 * s.sent
    assert set(s.errors) <= {"RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}
    # The model computed what was answered and little else: nothing is computed for a caller who
    # has given up (a request whose deadline passes in a Triton queue is dropped there).
    assert computed <= answered + max(3, 0.25 * answered)


@pytest.fixture(scope="module")
def two_post_instances(cache_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """Triton with two postprocess instances: one can encode a huge image while the other serves the
    small ones (the gateway lets one big image in at a time)."""
    repo = build(
        get_spec("u2netp"),
        cache_root / "repo-cpu-2post",
        max_batch_size=TEST_MAX_BATCH,
        queue_delay_us=20_000,
        postprocess_instances=2,
        measure_seconds=0,
    )
    server = start_triton(repo, tmp_path_factory.mktemp("big-small"))
    yield server
    server.stop()


async def test_a_stream_of_huge_images_does_not_starve_small_ones(
    two_post_instances: TritonServer, make_photo: Callable[..., bytes], tmp_path: Path
) -> None:
    gw = start_gateway([two_post_instances.cfg.grpc_url], tmp_path)
    try:
        small = [make_photo(1000, 1000, name) for name in ("astronaut", "chelsea")]
        big = [make_photo(6000, 6000, "coffee")]  # 36 MP
        await warm_up(gw, small)
        alone = await measure_closed(gw, small, concurrency=1, ok=8, fmt=OutputFormat.PNG)

        bigs = Counting(GatewayTarget(gw.target, OutputFormat.PNG, timeout=120.0))
        stream = asyncio.create_task(closed_loop(bigs, big, 1, Bounds(600.0, 100_000, warmup_s=0)))
        try:
            await asyncio.sleep(1.0)  # the first big image is in Triton
            beside = await measure_closed(gw, small, concurrency=1, ok=8, fmt=OutputFormat.PNG)
            for _ in range(240):  # big ones are served too, only behind small ones
                if "OK" in bigs.codes:
                    break
                await asyncio.sleep(0.5)
        finally:
            stream.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stream
            await bigs.close()
    finally:
        gw.stop()
    print(f"small alone {alone}; beside 36 MP images {beside}; big ones answered {bigs.codes}")
    assert "OK" in bigs.codes
    assert not beside.errors
    assert beside.latency.p50_ms < 3 * alone.latency.p50_ms


def test_a_full_triton_queue_is_resource_exhausted_and_leaves_the_endpoint_in_rotation(
    cache_root: Path, tmp_path: Path, make_photo: Callable[..., bytes]
) -> None:
    # One slot per Triton queue, and a gateway that admits everything: Triton's own queue overflows.
    repo = build(
        get_spec("u2netp"), cache_root / "repo-cpu-queue1", max_batch_size=1, max_queue_size=1, measure_seconds=0
    )
    server = start_triton(repo, tmp_path)
    gw = start_gateway([server.cfg.grpc_url], tmp_path, min_in_flight=64)
    try:
        photo = make_photo(256, 256)

        async def burst() -> list[str]:
            async with closing(GatewayTarget(gw.target, OutputFormat.MASK, timeout=120.0)) as target:
                return list(await asyncio.gather(*(target.send(photo) for _ in range(12))))

        codes = asyncio.run(burst())
        up = gateway_metric(gw, "matteserve_gateway_triton_endpoint_up", endpoint=server.cfg.grpc_url)
        retries = gateway_metric(gw, "matteserve_gateway_retries_total")
        with open(gw.log_path or "", encoding="utf-8") as log:
            flaps = log.read().count("NOT ready")
    finally:
        gw.stop()
        server.stop()
    assert "RESOURCE_EXHAUSTED" in codes
    assert "OK" in codes
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}
    assert up == 1
    assert retries == 0
    assert flaps == 0


class Counting:
    """A load-test target that keeps every code it answered, for a run that is cancelled."""

    def __init__(self, target: GatewayTarget) -> None:
        self.target = target
        self.name = target.name
        self.codes: list[str] = []

    async def send(self, image: bytes) -> str:
        code = await self.target.send(image)
        self.codes.append(code)
        return code

    async def close(self) -> None:
        await self.target.close()
