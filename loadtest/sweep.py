"""One load test: a sweep of closed-loop concurrencies or open-loop rates against one target, with
Triton's counters (and the gateway's) scraped around each run."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from matteserve.errors import MatteserveError
from matteserve.loadtest import gateway_metrics, runner, triton_metrics
from matteserve.loadtest.report import LoadTestReport, RunRecord
from matteserve.loadtest.runner import Bounds, Target
from matteserve.loadtest.schedule import Arrival

logger = logging.getLogger(__name__)


class Mode(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"


@dataclass(frozen=True)
class SweepPlan:
    mode: Mode
    loads: tuple[float, ...]  # concurrencies (closed) or requests/s (open)
    bounds: Bounds
    arrival: Arrival = Arrival.CONSTANT
    max_in_flight: int = runner.DEFAULT_MAX_IN_FLIGHT
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.loads:
            raise MatteserveError("give at least one concurrency (--concurrency 1,2,4) or rate (--rate 2,4)")
        if self.mode is Mode.CLOSED and any(c < 1 or c != int(c) for c in self.loads):
            raise MatteserveError(f"concurrencies must be whole numbers >= 1, got {self.loads}")
        if self.mode is Mode.OPEN and any(r <= 0 for r in self.loads):
            raise MatteserveError(f"arrival rates must be > 0 requests/s, got {self.loads}")


async def run_one(target: Target, inputs: Sequence[bytes], plan: SweepPlan, load: float) -> runner.RunResult:
    if plan.mode is Mode.CLOSED:
        return await runner.closed_loop(target, inputs, int(load), plan.bounds)
    return await runner.open_loop(target, inputs, load, plan.bounds, plan.arrival, plan.max_in_flight, plan.seed)


async def sweep(
    target: Target,
    inputs: Sequence[bytes],
    plan: SweepPlan,
    report: LoadTestReport,
    triton_metrics_url: str | None = None,
    gateway_metrics_url: str | None = None,
    on_done: Callable[[RunRecord], None] | None = None,
) -> LoadTestReport:
    """Run every load of the plan in order, appending one record per run to ``report`` and calling
    ``on_done(record)`` after each (before the next load starts)."""
    for load in plan.loads:
        before = triton_metrics.scrape(triton_metrics_url) if triton_metrics_url else None
        gw_before = gateway_metrics.scrape(gateway_metrics_url) if gateway_metrics_url else None
        result = await run_one(target, inputs, plan, load)
        summary = result.summary()
        answered = sum(1 for sample in result.samples if sample.code == "OK")  # warm-up too: `before` precedes it
        after = triton_metrics.scrape_settled(triton_metrics_url, before, answered) if triton_metrics_url else None
        gw_after = gateway_metrics.scrape(gateway_metrics_url) if gateway_metrics_url else None
        logger.info(
            "%s %g: %d sent, %d OK, %.2f req/s, p99 %.0f ms",
            plan.mode.value,
            load,
            summary.sent,
            summary.ok,
            summary.throughput_rps,
            summary.latency.p99_ms,
        )
        breakdown = triton_metrics.breakdown(before, after) if before is not None and after is not None else []
        gateway = gateway_metrics.breakdown(gw_before, gw_after) if gw_before and gw_after else None
        report.runs.append(RunRecord(summary, breakdown, gateway=gateway))
        if on_done is not None:
            on_done(report.runs[-1])
    return report
