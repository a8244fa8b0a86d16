"""Gateway overhead: the same images, in the same run, straight to Triton and through the gateway.

Rounds alternate (Triton, gateway, Triton, gateway, ...) so drift on a shared machine hits both
sides alike. Printed: images/s and p50/p99 latency per path, their ratios, and the gateway's own
time per request (its "gateway" minus "triton" timing), which machine noise hardly touches.

    .venv/bin/python -m matteserve.gateway.bench --requests 40 --concurrency 4 --rounds 3

It starts Triton (the default u2netp CPU repository, built if missing, or --repository) and a
gateway on free loopback ports; or give --triton host:port and --gateway host:port to measure
servers that already run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as tritongrpc

from matteserve import contract
from matteserve.client import AsyncClient, RetryPolicy
from matteserve.gateway.config import GatewayConfig
from matteserve.gateway.launcher import GatewayProcess
from matteserve.loadtest.bench import free_port
from matteserve.loadtest.images import PHOTOS, photo_jpeg
from matteserve.options import OutputFormat, RequestOptions


@dataclass(frozen=True)
class Side:
    path: str
    images_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int


def photos(size: int) -> list[bytes]:
    """Real photos (scikit-image), centre-cropped to size x size JPEGs, as the load test uses."""
    return [photo_jpeg(name, size) for name in PHOTOS]


async def closed_loop(
    call: Callable[[bytes], Awaitable[object]], images: list[bytes], requests: int, concurrency: int
) -> tuple[float, list[float]]:
    """``requests`` calls with ``concurrency`` in flight; (wall seconds, per-request latencies)."""
    latencies: list[float] = []
    counter = iter(range(requests))

    async def worker() -> None:
        for i in counter:
            start = time.perf_counter()
            await call(images[i % len(images)])
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, latencies


def summarise(path: str, wall: float, latencies: list[float]) -> Side:
    ms = np.array(latencies) * 1000
    return Side(path, len(ms) / wall, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), len(ms))


async def measure(args: argparse.Namespace, triton_url: str, gateway_target: str) -> Result:
    images = photos(args.size)
    options = RequestOptions(format=OutputFormat(args.format)).to_json()
    triton = tritongrpc.InferenceServerClient(triton_url)
    gateway_overhead_ms: list[float] = []

    async def direct(image: bytes) -> None:
        result = await triton.infer(contract.ENSEMBLE, contract.ensemble_inputs(image, options), client_timeout=300)
        result.as_numpy(contract.RESULT)

    async with AsyncClient(gateway_target, timeout=300, retry=RetryPolicy(attempts=1)) as client:

        async def through_gateway(image: bytes) -> None:
            result = await client.remove(image, format=args.format)
            gateway_overhead_ms.append(result.timings["gateway"] - result.timings["triton"])

        for call in (direct, through_gateway):  # warm both paths: connections, Triton's first batches
            await closed_loop(call, images, 2 * args.concurrency, args.concurrency)
        gateway_overhead_ms.clear()
        walls: dict[str, float] = {"triton": 0.0, "gateway": 0.0}
        lats: dict[str, list[float]] = {"triton": [], "gateway": []}
        for _ in range(args.rounds):
            for name, call in (("triton", direct), ("gateway", through_gateway)):
                wall, latencies = await closed_loop(call, images, args.requests, args.concurrency)
                walls[name] += wall
                lats[name] += latencies
    await triton.close()
    return Result(
        summarise("triton direct", walls["triton"], lats["triton"]),
        summarise("gateway", walls["gateway"], lats["gateway"]),
        statistics.median(gateway_overhead_ms),
    )


@dataclass(frozen=True)
class Result:
    triton: Side
    gateway: Side
    in_gateway_ms_p50: float  # the gateway's own time per request, from its timings

    @property
    def throughput_ratio(self) -> float:
        return self.gateway.images_per_s / self.triton.images_per_s

    def to_json(self) -> dict[str, object]:
        return asdict(self) | {
            "throughput_ratio": self.throughput_ratio,
            "p50_delta_ms": self.gateway.p50_ms - self.triton.p50_ms,
            "p99_delta_ms": self.gateway.p99_ms - self.triton.p99_ms,
        }

    def report(self) -> str:
        rows = [f"{'path':16} {'img/s':>8} {'p50 ms':>9} {'p99 ms':>9} {'n':>5}"]
        for side in (self.triton, self.gateway):
            rows.append(
                f"{side.path:16} {side.images_per_s:8.2f} {side.p50_ms:9.1f} {side.p99_ms:9.1f} {side.requests:5d}"
            )
        rows.append(
            f"gateway/direct throughput {self.throughput_ratio:.3f}; "
            f"p50 {self.gateway.p50_ms - self.triton.p50_ms:+.1f} ms; "
            f"p99 {self.gateway.p99_ms - self.triton.p99_ms:+.1f} ms; "
            f"time inside the gateway p50 {self.in_gateway_ms_p50:.2f} ms"
        )
        return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40, help="requests per path per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--size", type=int, default=512, help="square image side, px")
    parser.add_argument("--format", default="png", choices=[f.value for f in OutputFormat])
    parser.add_argument("--repository", type=Path, help="model repository (default: the u2netp CPU one)")
    parser.add_argument("--triton", help="use this running Triton gRPC endpoint")
    parser.add_argument("--gateway", help="use this running gateway (in front of --triton)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        servers: list[GatewayProcess] = []
        triton_server = None
        triton_url, gateway_target = args.triton, args.gateway
        if triton_url is None:
            from matteserve.build.builder import build
            from matteserve.build.repository import is_current
            from matteserve.paths import default_repository
            from matteserve.tritonserver import TritonConfig, TritonServer
            from matteserve.zoo import get_spec

            repo = args.repository or default_repository("u2netp", "cpu")
            if args.repository is None and not is_current(repo):
                build(get_spec("u2netp"), repo)
            cfg = TritonConfig(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
            triton_server = TritonServer(cfg, log_path=Path(tmp) / "triton.log").start()
            triton_url = cfg.grpc_url
        if gateway_target is None:
            gw_cfg = GatewayConfig(tritons=(triton_url,), port=free_port(), metrics_port=free_port())
            servers.append(GatewayProcess(gw_cfg, log_path=Path(tmp) / "gateway.log").start())
            gateway_target = gw_cfg.address
        try:
            result = asyncio.run(measure(args, triton_url, gateway_target))
        finally:
            for server in servers:
                server.stop()
            if triton_server is not None:
                triton_server.stop()
    print(result.report())
    if args.json:
        args.json.write_text(json.dumps(result.to_json() | {"settings": {k: str(v) for k, v in vars(args).items()}}))


if __name__ == "__main__":
    main()
