"""The gateway reaches Triton through a DNS name expanded into per-address endpoints."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path

from matteserve.client import Client
from matteserve.tritonserver import TritonServer

from ..conftest import start_gateway  # type: ignore[import-not-found]


def test_a_dns_target_serves_requests(triton: TritonServer, cache_root: Path, make_photo: Callable[..., bytes]) -> None:
    gateway = start_gateway([f"dns:///localhost:{triton.cfg.grpc_port}"], cache_root)
    try:
        with Client(gateway.target) as client:
            result = client.remove(make_photo(200, 150), format="mask")
        assert (result.width, result.height) == (200, 150)
        metrics_url = f"http://{gateway.cfg.metrics_host}:{gateway.cfg.metrics_port}/metrics"
        with urllib.request.urlopen(metrics_url, timeout=5) as r:
            text = r.read().decode()
        assert f'matteserve_gateway_triton_endpoint_up{{endpoint="127.0.0.1:{triton.cfg.grpc_port}"}} 1.0' in text
    finally:
        gateway.stop()
