"""Faults: two Tritons behind one gateway, one killed mid-batch; health follows Triton down and up;
a Triton restart shorter than the callers' deadlines loses nothing.

The tests share one pair of Triton servers and run in file order: the second starts where the first
left off (one Triton killed).
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from matteserve.client import AsyncClient, Client, RetryPolicy
from matteserve.client.errors import BackendUnavailable
from matteserve.gateway import GatewayProcess
from matteserve.tritonserver import TritonServer

from ..conftest import gateway_metric, start_gateway, start_triton  # type: ignore[import-not-found]

NO_RETRY = RetryPolicy(attempts=1)  # what comes back must be the gateway's doing, not the client's


@pytest.fixture(scope="module")
def pair(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[TritonServer]]:
    logs = tmp_path_factory.mktemp("faults")
    servers = [start_triton(repository, logs), start_triton(repository, logs)]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def gw(pair: list[TritonServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    # Calls wait up to 60 s (within their deadline) for a restarted Triton: a restart here takes 5-20 s.
    process = start_gateway([s.cfg.grpc_url for s in pair], tmp_path_factory.mktemp("faults-gw"), backend_wait_s=60.0)
    yield process
    process.stop()


def wait_health(client: Client, want: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (status := client.health()) != want:
        assert time.monotonic() < deadline, f"health stayed {status}, expected {want}"
        time.sleep(0.1)


def test_killing_one_triton_mid_batch_loses_no_image(
    gw: GatewayProcess, pair: list[TritonServer], make_photo: Callable[..., bytes]
) -> None:
    victim = pair[0]
    photos = {f"img{i}": make_photo(256 + 8 * i, 256) for i in range(12)}

    async def batch() -> dict[str, bytes]:
        results: dict[str, bytes] = {}
        queue = list(photos)
        killed: list[asyncio.Task[None]] = []

        async def kill_soon() -> None:
            # Batched requests finish together: wait until the workers have sent their next ones,
            # so the SIGKILL lands with requests in flight on the victim (least-loaded sends it half).
            await asyncio.sleep(0.05)
            await asyncio.to_thread(victim.kill)

        async with AsyncClient(gw.target, retry=NO_RETRY, timeout=120) as client:

            async def worker() -> None:
                while queue:
                    name = queue.pop()
                    results[name] = (await client.remove(photos[name], format="mask")).data
                    if len(results) == 3:
                        killed.append(asyncio.create_task(kill_soon()))

            await asyncio.gather(*(worker() for _ in range(4)))
            await asyncio.gather(*killed)
        return results

    results = asyncio.run(batch())
    assert sorted(results) == sorted(photos)
    for name, data in results.items():
        assert Image.open(io.BytesIO(data)).size == Image.open(io.BytesIO(photos[name])).size
    killed = victim.cfg.grpc_url
    assert gateway_metric(gw, "matteserve_gateway_retries_total", endpoint=killed) >= 1
    assert gateway_metric(gw, "matteserve_gateway_triton_errors_total", endpoint=killed, code="UNAVAILABLE") >= 1
    assert gateway_metric(gw, "matteserve_gateway_triton_endpoint_up", endpoint=killed) == 0
    assert gateway_metric(gw, "matteserve_gateway_requests_total", code="OK") == 12
    assert gateway_metric(gw, "matteserve_gateway_requests_total") == 12


def test_health_is_not_serving_while_no_triton_is_ready_and_serving_when_one_returns(
    gw: GatewayProcess, pair: list[TritonServer], make_photo: Callable[..., bytes]
) -> None:
    dead, alive = pair
    assert dead.process is None, "the first test killed this one"
    with Client(gw.target, retry=NO_RETRY) as client:
        wait_health(client, "SERVING", 5)
        alive.stop()
        wait_health(client, "NOT_SERVING", 5)
        assert client.health("matteserve.v1.BackgroundRemoval") == "NOT_SERVING"
        start = time.monotonic()
        with pytest.raises(BackendUnavailable, match="no Triton endpoint is ready"):
            client.remove(make_photo(64, 64), timeout=2.0)
        # It waited for an endpoint to come back, and answered before the caller's deadline.
        assert 1.0 < time.monotonic() - start < 2.0

        dead.start()  # the killed one comes back on its old port
        wait_health(client, "SERVING", 15)
        assert client.remove(make_photo(64, 64), format="mask").width == 64
    assert gateway_metric(gw, "matteserve_gateway_triton_endpoint_up", endpoint=dead.cfg.grpc_url) == 1
    assert gateway_metric(gw, "matteserve_gateway_triton_endpoint_up", endpoint=alive.cfg.grpc_url) == 0


def test_a_triton_restart_shorter_than_the_deadline_loses_nothing(
    gw: GatewayProcess, pair: list[TritonServer], make_photo: Callable[..., bytes]
) -> None:
    """The only ready Triton is killed while requests are in flight and arriving, and restarted; no
    client retries, so every answer is the gateway's: each request waits for Triton to come back."""
    victim = pair[0]
    assert victim.process is not None, "the second test restarted this one"
    photos = [make_photo(200 + 8 * i, 200) for i in range(10)]

    async def run() -> list[str]:
        outcomes: list[str] = []
        async with AsyncClient(gw.target, retry=NO_RETRY, timeout=90) as client:

            async def one(photo: bytes) -> None:
                try:
                    await client.remove(photo, format="mask")
                    outcomes.append("OK")
                except Exception as e:  # every outcome is counted below
                    outcomes.append(repr(e))

            first = [asyncio.create_task(one(p)) for p in photos[:4]]
            await asyncio.sleep(0.3)  # those four are in Triton now
            victim.kill()
            restart.set()
            await asyncio.sleep(0.5)
            rest = [asyncio.create_task(one(p)) for p in photos[4:]]  # they arrive while it is down
            await asyncio.gather(*first, *rest)
        return outcomes

    waits_before = gateway_metric(gw, "matteserve_gateway_backend_waits_total")
    restart = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(asyncio.run, run())
        # Triton restarts from this (main) thread, which outlives it: Triton's parent-death signal
        # follows the thread that started it.
        assert restart.wait(60)
        victim.start()
        outcomes = running.result(timeout=120)
    assert outcomes == ["OK"] * len(photos)
    assert gateway_metric(gw, "matteserve_gateway_backend_waits_total") > waits_before
