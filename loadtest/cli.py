"""``matteserve loadtest``: sweep a target in closed or open loop and write the report."""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer
from rich.progress import Progress

from matteserve.errors import MatteserveError
from matteserve.loadtest import images, perf_analyzer, sweep
from matteserve.loadtest.report import CrossCheck, LoadTestReport, RunRecord
from matteserve.loadtest.runner import Bounds, Target
from matteserve.loadtest.schedule import Arrival
from matteserve.loadtest.targets import GatewayTarget, TritonTarget, check_loopback
from matteserve.options import OutputFormat

logger = logging.getLogger(__name__)


class TargetKind(str, enum.Enum):
    TRITON = "triton"  # the remove_background ensemble over Triton's gRPC API
    GATEWAY = "gateway"  # the matteserve gateway's gRPC API, through matteserve.client


DEFAULT_ADDRESS = {TargetKind.TRITON: "127.0.0.1:8001", TargetKind.GATEWAY: "127.0.0.1:50051"}


def parse_loads(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise MatteserveError(f"expected comma-separated numbers such as 1,2,4,8, got {text!r}") from None


def default_concurrency() -> int:
    """Enough requests in flight to keep every pre/post instance of a node busy."""
    return max(4, 2 * (os.cpu_count() or 1))


def parse_formats(text: str) -> list[OutputFormat]:
    try:
        return [OutputFormat(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        known = ", ".join(f.value for f in OutputFormat)
        raise MatteserveError(f"formats must be a comma-separated list of {known}; got {text!r}") from None


def load_inputs(folder: Path | None, size: int, count: int) -> tuple[list[bytes], str]:
    if folder is not None:
        found = images.from_folder(folder)
        return [i.data for i in found], f"{len(found)} files from {folder}"
    made = images.generated(size, count)
    return [i.data for i in made], f"{len(made)} photos {size}x{size} JPEG"


async def run_loadtest(
    make_target: Callable[[], Target],
    inputs: list[bytes],
    plan: sweep.SweepPlan,
    report: LoadTestReport,
    triton_metrics_url: str | None,
    gateway_metrics_url: str | None = None,
    after_run: Callable[[RunRecord], None] | None = None,
) -> LoadTestReport:
    target = make_target()  # inside the event loop: a gRPC aio channel belongs to the loop that made it
    report.target = target.name
    try:
        with Progress(transient=True) as progress:
            loads = ", ".join(f"{x:g}" for x in plan.loads)
            task = progress.add_task(f"{plan.mode.value} loop {loads}", total=len(plan.loads))

            def done(record: RunRecord) -> None:
                if after_run is not None:
                    after_run(record)
                progress.advance(task)

            await sweep.sweep(target, inputs, plan, report, triton_metrics_url, gateway_metrics_url, done)
    finally:
        await target.close()
    return report


def cross_checker(
    grpc_url: str, inputs: list[bytes], options: bytes, out: Path, seconds: float
) -> Callable[[RunRecord], None]:
    """Run perf_analyzer right after each closed-loop run, at its concurrency, for about as long, so
    both tools see the machine in the same state."""
    perf_analyzer.check()

    def check(record: RunRecord) -> None:
        concurrency = int(record.summary.load)
        # Windows of as many responses as a third of the load test's run saw: perf_analyzer needs at
        # least three stable ones and reports the mean of the last three, so both take about as long.
        per_window = max(10, round(record.summary.throughput_rps * seconds / 3))
        result = perf_analyzer.run(grpc_url, inputs, options, concurrency, out, requests_per_window=per_window)
        s = record.summary
        record.cross_check = CrossCheck(
            concurrency, s.throughput_rps, result.throughput_rps, s.latency.p50_ms, result.p50_ms
        )

    return check


def loadtest(
    target: Annotated[TargetKind, typer.Option(help="What to load: Triton's ensemble or the gateway.")] = (
        TargetKind.TRITON
    ),
    address: Annotated[
        str | None, typer.Option(help="HOST:PORT of the gRPC API (default 127.0.0.1:8001 or :50051).")
    ] = None,
    mode: Annotated[sweep.Mode, typer.Option(help="closed: fixed concurrency; open: scheduled arrivals.")] = (
        sweep.Mode.CLOSED
    ),
    concurrency: Annotated[str, typer.Option(help="Closed loop: concurrencies to sweep.")] = "1,2,4,8,16",
    rate: Annotated[str, typer.Option(help="Open loop: arrival rates to sweep, requests/s.")] = "2,4,6,8",
    arrival: Annotated[Arrival, typer.Option(help="Open loop: evenly spaced or Poisson arrivals.")] = (Arrival.POISSON),
    duration: Annotated[float, typer.Option(help="Seconds measured per load, after the warm-up.")] = 20.0,
    max_requests: Annotated[
        int, typer.Option(help="Stop a load after this many measured OK responses (refusals do not count).")
    ] = 2000,
    warmup: Annotated[float, typer.Option(help="Seconds sent but not counted before each load.")] = 3.0,
    images_dir: Annotated[
        Path | None, typer.Option("--images", help="Send these files (round-robin) instead of generated photos.")
    ] = None,
    size: Annotated[int, typer.Option(help="Generated photos: width and height in px.")] = 1024,
    count: Annotated[int, typer.Option(help="Generated photos: how many distinct images.")] = 4,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="Output format requested.")] = (
        OutputFormat.PNG
    ),
    triton_metrics: Annotated[
        str, typer.Option(help="Triton's metrics URL for the breakdown ('' for none).")
    ] = "http://127.0.0.1:8002/metrics",
    gateway_metrics: Annotated[
        str, typer.Option(help="The gateway's metrics URL, with --target gateway ('' for none).")
    ] = "http://127.0.0.1:8090/metrics",
    perf_analyzer_check: Annotated[
        bool, typer.Option("--perf-analyzer", help="Cross-check each concurrency with Triton's perf_analyzer.")
    ] = False,
    out: Annotated[Path, typer.Option(help="Folder for loadtest.json, .csv and .png.")] = Path("loadtest-results"),
    timeout: Annotated[float, typer.Option(help="Per-request timeout, seconds.")] = 60.0,
    api_key: Annotated[str | None, typer.Option(help="Gateway API key.", envvar="MATTESERVE_API_KEY")] = None,
    allow_remote: Annotated[bool, typer.Option(help="Allow a target that is not this machine.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Measure throughput and latency of Triton or the gateway; write JSON, CSV and a plot."""
    from matteserve.cli import setup_logging

    setup_logging(verbose)
    address = address or DEFAULT_ADDRESS[target]
    check_loopback(address, allow_remote)
    if target is not TargetKind.GATEWAY:
        gateway_metrics = ""
    for url in filter(None, (triton_metrics, gateway_metrics)):
        check_loopback(urlsplit(url).netloc, allow_remote)
    if perf_analyzer_check and (target is not TargetKind.TRITON or mode is not sweep.Mode.CLOSED):
        raise MatteserveError(
            "--perf-analyzer compares closed-loop runs against Triton: use --target triton --mode closed"
        )
    loads = parse_loads(concurrency if mode is sweep.Mode.CLOSED else rate)
    plan = sweep.SweepPlan(mode, loads, Bounds(duration, max_requests, warmup), arrival)
    inputs, described = load_inputs(images_dir, size, count)
    options = json.dumps({"format": output_format.value}).encode()

    def make_target() -> Target:
        if target is TargetKind.TRITON:
            return TritonTarget(address, inputs, output_format, timeout)
        return GatewayTarget(address, output_format, timeout, api_key)

    settings = {
        "mode": mode.value,
        "loads": list(loads),
        "arrival": arrival.value if mode is sweep.Mode.OPEN else None,
        "duration_s": duration,
        "max_requests": max_requests,
        "warmup_s": warmup,
        "timeout_s": timeout,
    }
    report = LoadTestReport(f"{target.value} {address}", described, output_format.value, settings)
    checker = cross_checker(address, inputs, options, out, duration) if perf_analyzer_check else None
    asyncio.run(
        run_loadtest(make_target, inputs, plan, report, triton_metrics or None, gateway_metrics or None, checker)
    )
    report.print()
    for path in report.write_all(out):
        typer.echo(f"wrote {path}")
