"""The gateway's own metrics, scraped before and after a run: how many requests it answered with
which code, and how much of each request's time was Triton's (the rest is the gateway's own)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client.samples import Sample

from matteserve.loadtest import prometheus
from matteserve.loadtest.prometheus import total

REQUESTS = "matteserve_gateway_requests_total"
REQUEST_SECONDS = "matteserve_gateway_request_duration_seconds"
TRITON_SECONDS = "matteserve_gateway_triton_duration_seconds"


@dataclass(frozen=True)
class GatewaySnapshot:
    codes: dict[str, float]  # requests by gRPC status name, all methods and formats
    request_sum: float
    request_count: float
    triton_sum: float
    triton_count: float


def parse(found: Sequence[Sample]) -> GatewaySnapshot:
    codes: dict[str, float] = {}
    for sample in found:
        if sample.name == REQUESTS:
            code = sample.labels.get("code", "UNKNOWN")
            codes[code] = codes.get(code, 0.0) + sample.value
    sums = (
        total(found, histogram + part) for histogram in (REQUEST_SECONDS, TRITON_SECONDS) for part in ("_sum", "_count")
    )
    return GatewaySnapshot(codes, *sums)


def scrape(url: str, timeout: float = 5.0) -> GatewaySnapshot | None:
    found = prometheus.scrape(url, timeout)
    return parse(found) if found is not None else None


@dataclass(frozen=True)
class GatewayBreakdown:
    codes: dict[str, int]  # what the gateway answered during the run, warm-up included
    request_ms: float  # mean time inside the gateway per request
    triton_ms: float  # mean time of one Triton call
    own_ms: float  # time per request outside Triton calls: checks, marshalling, waiting in the gateway


def breakdown(before: GatewaySnapshot, after: GatewaySnapshot) -> GatewayBreakdown:
    codes = {c: round(n - before.codes.get(c, 0.0)) for c, n in sorted(after.codes.items())}
    requests = after.request_count - before.request_count
    calls = after.triton_count - before.triton_count
    request_s = after.request_sum - before.request_sum
    triton_s = after.triton_sum - before.triton_sum
    return GatewayBreakdown(
        codes={c: n for c, n in codes.items() if n},
        request_ms=request_s / requests * 1000.0 if requests else 0.0,
        triton_ms=triton_s / calls * 1000.0 if calls else 0.0,
        own_ms=(request_s - triton_s) / requests * 1000.0 if requests else 0.0,
    )
