"""The gateway's Prometheus metrics (names fixed: the deploy and load-test code query them).

Buckets: a request takes milliseconds on a GPU node and 0.1-5 s on CPU (more when queued), so the
latency buckets run from 2.5 ms to 60 s; sizes from 1 KB to 64 MB; inputs from 0.01 to 40 megapixels.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0)
BYTES_BUCKETS = tuple(float(kb * 1024) for kb in (1, 4, 16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536))
MEGAPIXEL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 40.0)


class GatewayMetrics:
    """One registry per gateway, so several gateways can live in one process (tests)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "matteserve_gateway_requests_total",
            "Images handled, by RPC method, gRPC status code name and output format.",
            ["method", "code", "format"],
            registry=r,
        )
        self.request_duration = Histogram(
            "matteserve_gateway_request_duration_seconds",
            "Time from receiving an image to answering it, inside the gateway.",
            ["method", "format"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.triton_duration = Histogram(
            "matteserve_gateway_triton_duration_seconds",
            "Time of one Triton inference call, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("matteserve_gateway_in_flight_requests", "Images being worked on now.", registry=r)
        self.request_bytes = Histogram(
            "matteserve_gateway_request_bytes", "Size of the input image.", buckets=BYTES_BUCKETS, registry=r
        )
        self.response_bytes = Histogram(
            "matteserve_gateway_response_bytes", "Size of the returned result.", buckets=BYTES_BUCKETS, registry=r
        )
        self.input_megapixels = Histogram(
            "matteserve_gateway_input_megapixels",
            "Pixels of the input image as declared by its header, in millions.",
            buckets=MEGAPIXEL_BUCKETS,
            registry=r,
        )
        self.endpoint_up = Gauge(
            "matteserve_gateway_triton_endpoint_up",
            "1 while the Triton endpoint is ready for the ensemble, else 0.",
            ["endpoint"],
            registry=r,
        )
        self.triton_errors = Counter(
            "matteserve_gateway_triton_errors_total",
            "Failed Triton calls, by endpoint and the gRPC status code name they map to.",
            ["endpoint", "code"],
            registry=r,
        )
        self.retries = Counter(
            "matteserve_gateway_retries_total",
            "Requests sent again to another endpoint after this endpoint was unavailable.",
            ["endpoint"],
            registry=r,
        )
        self.shed = Counter(
            "matteserve_gateway_shed_total",
            "Requests refused by admission (RESOURCE_EXHAUSTED) before any work, by size lane.",
            ["lane"],
            registry=r,
        )
        self.drain_rate = Gauge(
            "matteserve_gateway_drain_rate",
            "Requests per second the backends are estimated to finish, by size lane (admission's estimate).",
            ["lane"],
            registry=r,
        )
        self.backend_waits = Counter(
            "matteserve_gateway_backend_waits_total",
            "Requests that found no Triton endpoint ready and waited for one to come back.",
            registry=r,
        )

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
