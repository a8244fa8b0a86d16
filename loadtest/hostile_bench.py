"""``matteserve bench hostile``: hostile-caller figures on a real Triton + gateway (loopback), what a
bomb, an unauthenticated flood and an unread stream cost the gateway.
tests/integration/test_gateway_hostile.py asserts bounds on the same things; this prints the numbers.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from PIL import Image

from matteserve.api.v1 import matteserve_pb2 as pb
from matteserve.api.v1 import matteserve_pb2_grpc as pb_grpc
from matteserve.build.builder import build
from matteserve.client import AsyncClient, Client, RetryPolicy
from matteserve.client.common import build_request
from matteserve.errors import MatteserveError
from matteserve.gateway import GatewayConfig, GatewayProcess
from matteserve.gateway.auth import hash_key
from matteserve.loadtest import hostile, prometheus
from matteserve.loadtest.bench import free_port
from matteserve.loadtest.hostile import png_bomb, png_chunk, png_with
from matteserve.loadtest.images import photo_jpeg
from matteserve.loadtest.stats import LatencySummary
from matteserve.pipeline.decode import ImageLimits, open_image
from matteserve.tritonserver import TritonConfig, TritonServer
from matteserve.zoo import get_spec

ONCE = RetryPolicy(attempts=1)
MiB = 1024 * 1024


def header_costs() -> None:
    cases = {
        "PNG bomb 60000x60000 1-bit (437 KB)": png_bomb(60000),
        "PNG with 500k tEXt chunks": png_with(before_idat=png_chunk(b"tEXt", b"k\x00v") * 500_000),
    }
    for name, data in cases.items():
        start = time.process_time()
        try:
            open_image(data, ImageLimits())
            outcome = "accepted"
        except MatteserveError as e:
            outcome = type(e).__name__
        print(f"open_image, {name}: {outcome} in {(time.process_time() - start) * 1000:.2f} CPU ms")


def peak_rss_mib(gw: GatewayProcess) -> float:
    assert gw.process is not None
    return hostile.peak_rss_mib(gw.process.pid)


def streamed(gw: GatewayProcess) -> float:
    found = prometheus.read(gw.cfg.metrics_url)
    return prometheus.total(found, "matteserve_gateway_requests_total", method="RemoveStream")


def gateway(triton: TritonServer, folder: Path, **settings: Any) -> GatewayProcess:
    cfg = GatewayConfig(tritons=(triton.cfg.grpc_url,), port=free_port(), metrics_port=free_port(), **settings)
    return GatewayProcess(cfg, log_path=folder / f"gateway-{cfg.port}.log").start()


def bombs_beside_health(gw: GatewayProcess) -> None:
    buf = io.BytesIO()
    Image.open(io.BytesIO(photo_jpeg("astronaut", 3000))).convert("RGBA").save(buf, "PNG", compress_level=1)
    payloads = [png_bomb(60000), buf.getvalue()] * 4

    before = peak_rss_mib(gw)
    found = asyncio.run(hostile.refusals_beside_health(gw.target, payloads))
    health = LatencySummary.of(found.health_s)
    print(
        f"health during 4 bombs + 4 9 MP PNGs refused: {health.count} checks, p50 {health.p50_ms:.1f} ms, "
        f"max {health.max_ms:.0f} ms; slowest refusal {max(found.refusal_s) * 1000:.0f} ms; "
        f"gateway peak RSS +{peak_rss_mib(gw) - before:.0f} MiB"
    )


def unauthenticated_flood(gw: GatewayProcess) -> None:
    body = bytes(16 * MiB)

    async def run() -> set[str]:
        async with AsyncClient(gw.target, api_key="wrong", retry=ONCE, timeout=120) as client:
            await client.health()

            async def one() -> str:
                try:
                    await client.remove(body)
                except MatteserveError as e:
                    return type(e).__name__
                return "OK"

            return set(await asyncio.gather(*(one() for _ in range(16))))

    before, start = peak_rss_mib(gw), time.perf_counter()
    outcomes = asyncio.run(run())
    print(
        f"16 unauthenticated 16 MiB calls: {sorted(outcomes)} in {time.perf_counter() - start:.2f} s; "
        f"gateway peak RSS +{peak_rss_mib(gw) - before:.0f} MiB"
    )


def unread_stream(gw: GatewayProcess, window: int) -> None:
    photo = photo_jpeg("astronaut", 1024)

    def items() -> Iterator[pb.RemoveStreamRequest]:
        for i in range(32):
            yield pb.RemoveStreamRequest(id=str(i), request=build_request(photo, "raw"))

    before = peak_rss_mib(gw)
    options = [("grpc.max_receive_message_length", 64 * MiB), ("grpc.http2.bdp_probe", 0)]
    with grpc.insecure_channel(gw.target, options=options) as channel:
        call = pb_grpc.BackgroundRemovalStub(channel).RemoveStream(items(), timeout=300)
        try:
            while streamed(gw) < window:
                time.sleep(0.1)
            with Client(gw.target, timeout=120) as other:
                for _ in range(4):
                    other.remove(photo, format="raw")
            worked = streamed(gw)
        finally:
            call.cancel()
    print(
        f"stream never read (window {window}): {worked:.0f} items worked on while 4 other calls finished; "
        f"gateway peak RSS +{peak_rss_mib(gw) - before:.0f} MiB"
    )


def measure_hostile() -> None:
    """Each case against a fresh gateway in front of one Triton, after the header costs in this process."""
    header_costs()
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        folder = Path(tmp)
        repo = build(get_spec("u2netp"), folder / "repo")
        cfg = TritonConfig(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
        triton = TritonServer(cfg, log_path=folder / "triton.log").start()
        keys = folder / "keys"
        keys.write_text(f"{hash_key('bench-hostile-key-0123456789')}\n")
        try:
            for run, settings in (
                (bombs_beside_health, {"max_pixels": 1_000_000}),
                (unauthenticated_flood, {"api_keys_file": keys}),
                (lambda gw: unread_stream(gw, 2), {"stream_window": 2}),
            ):
                gw = gateway(triton, folder, **settings)
                try:
                    run(gw)
                finally:
                    gw.stop()
        finally:
            triton.stop()
