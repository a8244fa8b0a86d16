"""The gateway's own metrics, scraped before and after a run: how many requests it answered with
which code, and how much of each request's time was Triton's (the rest is the gateway's own)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from matteserve.loadtest.triton_metrics import fetch

REQUESTS = "matteserve_gateway_requests"
REQUEST_SECONDS = "matteserve_gateway_request_duration_seconds"
TRITON_SECONDS = "matteserve_gateway_triton_duration_seconds"


@dataclass(frozen=True)
class GatewaySnapshot:
    codes: dict[str, float]  # requests by gRPC status name, all methods and formats
    request_sum: float
    request_count: float
    triton_sum: float
    triton_count: float


def parse(text: str) -> GatewaySnapshot:
    codes: dict[str, float] = {}
    sums = {REQUEST_SECONDS: [0.0, 0.0], TRITON_SECONDS: [0.0, 0.0]}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == REQUESTS + "_total":  # the family is named with or without _total
                code = sample.labels.get("code", "UNKNOWN")
                codes[code] = codes.get(code, 0.0) + sample.value
            elif family.name in sums and sample.name.endswith(("_sum", "_count")):
                sums[family.name][0 if sample.name.endswith("_sum") else 1] += sample.value
    return GatewaySnapshot(codes, *sums[REQUEST_SECONDS], *sums[TRITON_SECONDS])


def scrape(url: str, timeout: float = 5.0) -> GatewaySnapshot | None:
    text = fetch(url, timeout)
    return parse(text) if text is not None else None


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
