"""After a known set of requests, /metrics (and a real Prometheus scraping it) shows exactly those."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from prometheus_client.samples import Sample

from matteserve.client import Client
from matteserve.client.errors import InvalidRequest
from matteserve.gateway import GatewayProcess
from matteserve.loadtest.prometheus import read, total
from matteserve.tritonserver import TritonServer

from ..conftest import free_port, installed_tool, start_gateway  # type: ignore[import-not-found]

Samples = list[Sample]


@pytest.fixture(scope="module")
def counted(
    triton: TritonServer, tmp_path_factory: pytest.TempPathFactory, make_photo: Callable[..., bytes]
) -> tuple[GatewayProcess, Samples]:
    """A fresh gateway that has seen exactly: Remove 3 png + 2 mask OK, 1 bad png; stream 1 jpeg OK, 1 bad."""
    gw = start_gateway([triton.cfg.grpc_url], tmp_path_factory.mktemp("metrics"))
    photo = make_photo(256, 192)
    with Client(gw.target) as client:
        for fmt in ("png", "png", "png", "mask", "mask"):
            client.remove(photo, format=fmt)
        with pytest.raises(InvalidRequest):
            client.remove(b"")
        items = {i.id: i for i in client.remove_stream([("good", photo), ("bad", b"junk")], format="jpeg")}
    assert items["good"].result is not None
    assert items["bad"].error is not None
    return gw, read(gw.cfg.metrics_url)


@pytest.fixture(scope="module")
def gateway_under_test(counted: tuple[GatewayProcess, Samples]) -> Iterator[GatewayProcess]:
    yield counted[0]
    counted[0].stop()


def test_request_counters_show_exactly_the_requests_sent(counted: tuple[GatewayProcess, Samples]) -> None:
    _, m = counted
    name = "matteserve_gateway_requests_total"
    assert total(m, name, method="Remove", code="OK", format="png") == 3
    assert total(m, name, method="Remove", code="OK", format="mask") == 2
    assert total(m, name, method="Remove", code="INVALID_ARGUMENT", format="png") == 1
    assert total(m, name, method="RemoveStream", code="OK", format="jpeg") == 1
    assert total(m, name, method="RemoveStream", code="INVALID_ARGUMENT", format="jpeg") == 1
    assert total(m, name) == 8


def test_histograms_count_the_same_requests(counted: tuple[GatewayProcess, Samples]) -> None:
    gw, m = counted
    duration = "matteserve_gateway_request_duration_seconds_count"
    assert total(m, duration, method="Remove", format="png") == 4
    assert total(m, duration, method="Remove", format="mask") == 2
    assert total(m, duration, method="RemoveStream", format="jpeg") == 2
    endpoint = gw.cfg.tritons[0]
    assert total(m, "matteserve_gateway_triton_duration_seconds_count", endpoint=endpoint) == 6  # only valid images
    assert total(m, "matteserve_gateway_request_bytes_count") == 8
    assert total(m, "matteserve_gateway_response_bytes_count") == 6
    assert total(m, "matteserve_gateway_input_megapixels_count") == 6
    # 256x192 = 0.049 MP: every valid image lands at or below the 0.05 bucket, none below 0.01.
    assert total(m, "matteserve_gateway_input_megapixels_bucket", le="0.05") == 6
    assert total(m, "matteserve_gateway_input_megapixels_bucket", le="0.01") == 0
    # CPU inference takes tens of milliseconds at least, and the whole request at least as long.
    assert total(m, "matteserve_gateway_triton_duration_seconds_bucket", endpoint=endpoint, le="0.0025") == 0


def test_gauges_show_a_healthy_idle_gateway(counted: tuple[GatewayProcess, Samples]) -> None:
    gw, m = counted
    endpoint = gw.cfg.tritons[0]
    assert total(m, "matteserve_gateway_in_flight_requests") == 0
    assert total(m, "matteserve_gateway_triton_endpoint_up", endpoint=endpoint) == 1
    assert total(m, "matteserve_gateway_triton_errors_total") == 0
    assert total(m, "matteserve_gateway_retries_total") == 0


def test_a_real_prometheus_scrapes_the_same_counts(
    gateway_under_test: GatewayProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    binary = installed_tool("prometheus", "`make system-deps` installs the Debian package prometheus")
    root = tmp_path_factory.mktemp("prometheus")
    target = f"{gateway_under_test.cfg.metrics_host}:{gateway_under_test.cfg.metrics_port}"
    config = root / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s"},
                "scrape_configs": [{"job_name": "gateway", "static_configs": [{"targets": [target]}]}],
            }
        )
    )
    port = free_port()
    with (root / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={root}/data",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        query = 'sum by (code) (matteserve_gateway_requests_total{job="gateway"})'
        url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        deadline = time.monotonic() + 30
        by_code: dict[str, float] = {}
        while sum(by_code.values()) < 8 and time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    result = json.load(r)["data"]["result"]
            except OSError:
                continue
            by_code = {s["metric"]["code"]: float(s["value"][1]) for s in result}
        assert by_code == {"OK": 6.0, "INVALID_ARGUMENT": 2.0}
    finally:
        process.terminate()
        process.wait(10)
