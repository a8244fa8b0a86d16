"""The gateway as deploy/k8s runs it: `--triton=dns:///<name>:8001` (a gRPC resolver URI for the
headless Triton Service) reaches a real Triton, reports that endpoint in its metrics and serves."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from matteserve.client import Client
from matteserve.tritonserver import TritonServer

from ..conftest import start_gateway  # type: ignore[import-not-found]


def test_a_dns_resolver_target_reaches_triton(triton: TritonServer, photos: dict[str, bytes], tmp_path: Path) -> None:
    target = f"dns:///localhost:{triton.cfg.grpc_port}"
    gateway = start_gateway([target], tmp_path)
    try:
        with Client(gateway.target, timeout=60.0) as client:
            result = client.remove(next(iter(photos.values())), format="png")
        assert result.content_type == "image/png"
        with urllib.request.urlopen(gateway.cfg.metrics_url, timeout=5) as r:
            metrics = r.read().decode()
        assert f'matteserve_gateway_triton_endpoint_up{{endpoint="{target}"}} 1.0' in metrics
    finally:
        gateway.stop()
