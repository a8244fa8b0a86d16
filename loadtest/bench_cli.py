"""``matteserve bench``: the comparison run (no subcommand), ``bench gateway`` (the gateway's overhead
over Triton), ``bench gpu ...`` (the GPU path's numbers), ``bench codecs`` (the per-image codec
candidates) and ``bench hostile`` (what hostile callers cost the gateway). Every request is sent by
:mod:`matteserve.loadtest.runner` and every percentile is :mod:`matteserve.loadtest.stats`'."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import typer

from matteserve.errors import MatteserveError
from matteserve.loadtest.cli import default_concurrency, parse_formats, parse_loads
from matteserve.loadtest.gpu_bench import app as gpu_app
from matteserve.loadtest.stats import LatencySummary
from matteserve.options import OutputFormat

app = typer.Typer(name="bench", add_completion=False, pretty_exceptions_enable=False)
app.add_typer(gpu_app, name="gpu")


def built_repository(model: str) -> Path:
    """The model's default CPU repository, built first when missing or stale."""
    from matteserve.build.builder import build
    from matteserve.build.repository import is_current
    from matteserve.paths import default_repository
    from matteserve.zoo import get_spec

    repository = default_repository(model, "cpu")
    if not is_current(repository):
        build(get_spec(model), repository)
    return repository


@app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    sizes: Annotated[str, typer.Option(help="Square JPEG sizes in px.")] = "1024,2048",
    seconds: Annotated[float, typer.Option(help="Seconds per measurement (the model-only ones take half).")] = 20.0,
    concurrency: Annotated[str, typer.Option(help="End-to-end concurrencies tried; the best is kept.")] = "4,8",
    count: Annotated[int, typer.Option(help="Distinct photos per size.")] = 4,
    model: Annotated[str, typer.Option(help="u2netp (fast) or u2net (quality): the default repository's model.")] = (
        "u2netp"
    ),
    repository: Annotated[
        Path | None, typer.Option(help="Model repository to serve (default: the model's CPU build, built if missing).")
    ] = None,
    gateway: Annotated[bool, typer.Option(help="Also measure through a gateway in front of Triton.")] = True,
    stand_in: Annotated[
        bool,
        typer.Option(help="Also measure the stack's own ceiling with the stand-in matting step (model `null`)."),
    ] = True,
    formats: Annotated[str, typer.Option(help="Output formats for the stage costs and the ceiling.")] = (
        "png,webp,jpeg,mask,raw"
    ),
    stack_seconds: Annotated[float, typer.Option(help="Seconds per size and format for the ceiling.")] = 10.0,
    stack_concurrency: Annotated[
        int | None, typer.Option(help="Requests in flight for the ceiling (default: twice the cores, at least 4).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for bench.json and bench.png.")] = Path("bench-results"),
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Compare matteserve end to end with the model-only ceiling and rembg's remove(), measure the CPU
    per image of every stage and output format, and the stack's own ceiling with the stand-in
    matting step, in one run. Given a stand-in repository (`build --model null`), only the last two.
    The subcommands measure the gateway's overhead, the GPU path, the codec candidates and hostile
    callers instead."""
    from matteserve import stand_in as stand_in_step
    from matteserve.build.repository import read_manifest
    from matteserve.cli import setup_logging
    from matteserve.loadtest.bench import StackPlan, run_bench

    setup_logging(verbose)
    if ctx.invoked_subcommand is not None:
        return
    chosen = tuple(parse_formats(formats))
    repository = repository or built_repository(model)
    stack_plan = None
    if stand_in:
        stand_in_repo = repository
        if not (read_manifest(repository) or {}).get("stand_in"):
            stand_in_repo = built_repository(stand_in_step.MODEL)
        stack_plan = StackPlan(stand_in_repo, chosen, stack_seconds, stack_concurrency or default_concurrency())
    out.mkdir(parents=True, exist_ok=True)
    report = run_bench(
        repository,
        [int(x) for x in parse_loads(sizes)],
        seconds,
        [int(x) for x in parse_loads(concurrency)],
        count,
        log_dir=out,
        gateway=gateway,
        stack_plan=stack_plan,
        formats=chosen,
    )
    report.print()
    for path in (report.write_json(out / "bench.json"), report.write_chart(out / "bench.png")):
        if path is not None:
            typer.echo(f"wrote {path}")


@dataclass(frozen=True)
class PathFigures:
    path: str
    images_per_s: float
    latency: LatencySummary


@dataclass(frozen=True)
class Overhead:
    triton: PathFigures
    gateway: PathFigures
    in_gateway_ms: float | None  # mean time per request inside the gateway outside its Triton call

    @property
    def throughput_ratio(self) -> float:
        return self.gateway.images_per_s / self.triton.images_per_s

    def to_json(self) -> dict[str, object]:
        return asdict(self) | {
            "throughput_ratio": self.throughput_ratio,
            "p50_delta_ms": self.gateway.latency.p50_ms - self.triton.latency.p50_ms,
            "p99_delta_ms": self.gateway.latency.p99_ms - self.triton.latency.p99_ms,
        }

    def report(self) -> str:
        rows = [f"{'path':16} {'img/s':>8} {'p50 ms':>9} {'p99 ms':>9} {'n':>5}"]
        for side in (self.triton, self.gateway):
            lat = side.latency
            rows.append(f"{side.path:16} {side.images_per_s:8.2f} {lat.p50_ms:9.1f} {lat.p99_ms:9.1f} {lat.count:5d}")
        inside = "unknown (no gateway metrics)" if self.in_gateway_ms is None else f"{self.in_gateway_ms:.2f} ms"
        rows.append(
            f"gateway/direct throughput {self.throughput_ratio:.3f}; "
            f"p50 {self.gateway.latency.p50_ms - self.triton.latency.p50_ms:+.1f} ms; "
            f"p99 {self.gateway.latency.p99_ms - self.triton.latency.p99_ms:+.1f} ms; "
            f"time inside the gateway, mean {inside}"
        )
        return "\n".join(rows)


async def measure_overhead(
    triton_url: str,
    gateway_target: str,
    gateway_metrics: str | None,
    images: list[bytes],
    output_format: OutputFormat,
    requests: int,
    rounds: int,
    concurrency: int,
) -> Overhead:
    """Alternating closed-loop rounds of ``requests`` OK answers straight to Triton and through the
    gateway, so that drift on a shared machine hits both alike."""
    from matteserve.loadtest import gateway_metrics as gw_metrics
    from matteserve.loadtest.runner import Bounds, Target, closed_loop
    from matteserve.loadtest.targets import GatewayTarget, TritonTarget

    timeout = 300.0
    targets: dict[str, Target] = {
        "triton direct": TritonTarget(triton_url, images, output_format, timeout),
        "gateway": GatewayTarget(gateway_target, output_format, timeout),
    }
    ok, window = dict.fromkeys(targets, 0), dict.fromkeys(targets, 0.0)
    latencies: dict[str, list[float]] = {name: [] for name in targets}
    try:
        for target in targets.values():  # warm both paths: connections, Triton's first batches
            await closed_loop(target, images, concurrency, Bounds(timeout, 2 * concurrency, warmup_s=0))
        before = gw_metrics.scrape(gateway_metrics) if gateway_metrics else None
        for _ in range(rounds):
            for name, target in targets.items():
                run = await closed_loop(target, images, concurrency, Bounds(timeout, requests, warmup_s=0))
                summary = run.summary()
                if summary.errors:
                    raise MatteserveError(f"{target.name} answered errors: {summary.errors}")
                ok[name] += summary.ok
                window[name] += summary.window_s
                latencies[name] += [s.latency for s in run.samples]
        after = gw_metrics.scrape(gateway_metrics) if gateway_metrics else None
    finally:
        for target in targets.values():
            await target.close()
    triton, gateway = (PathFigures(n, ok[n] / window[n], LatencySummary.of(latencies[n])) for n in targets)
    in_gateway = gw_metrics.breakdown(before, after).own_ms if before and after else None
    return Overhead(triton, gateway, in_gateway)


@app.command("gateway")
def gateway_overhead(
    requests: Annotated[int, typer.Option(help="Requests per path per round.")] = 40,
    rounds: Annotated[int, typer.Option(help="Alternating rounds per path.")] = 3,
    concurrency: Annotated[int, typer.Option(help="Requests in flight.")] = 4,
    size: Annotated[int, typer.Option(help="Square JPEG size in px.")] = 512,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="Output format requested.")] = (
        OutputFormat.PNG
    ),
    repository: Annotated[
        Path | None, typer.Option(help="Model repository to serve (default: u2netp's CPU build, built if missing).")
    ] = None,
    triton: Annotated[str | None, typer.Option(help="Measure this running Triton gRPC endpoint (HOST:PORT).")] = None,
    gateway: Annotated[str | None, typer.Option(help="Measure this running gateway, in front of --triton.")] = None,
    gateway_metrics: Annotated[
        str, typer.Option(help="With --gateway: its metrics URL, for the time spent inside it.")
    ] = "http://127.0.0.1:8090/metrics",
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the figures here.")] = None,
) -> None:
    """The same photos in one run, straight to Triton and through the gateway in alternating rounds:
    images/s and p50/p99 of each, their ratios, and the gateway's own time per request. Starts Triton
    and a gateway on free loopback ports unless --triton and --gateway name running ones."""
    import tempfile

    from matteserve.gateway import GatewayConfig, GatewayProcess
    from matteserve.loadtest.bench import free_port
    from matteserve.loadtest.images import generated
    from matteserve.tritonserver import TritonConfig, TritonServer

    if gateway is not None and triton is None:
        raise typer.BadParameter("a running gateway is measured against the Triton behind it", param_hint="--triton")
    images = [i.data for i in generated(size)]
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as running:
        if triton is None:
            repo = repository or built_repository("u2netp")
            cfg = TritonConfig(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
            triton = running.enter_context(TritonServer(cfg, log_path=Path(tmp) / "triton.log")).cfg.grpc_url
        if gateway is None:
            # Admission takes every sender's request: refused, a closed-loop sender only asks again.
            gw_cfg = GatewayConfig(
                tritons=(triton,), port=free_port(), metrics_port=free_port(), min_in_flight=concurrency
            )
            running.enter_context(GatewayProcess(gw_cfg, log_path=Path(tmp) / "gateway.log"))
            gateway, gateway_metrics = gw_cfg.address, gw_cfg.metrics_url
        result = asyncio.run(
            measure_overhead(triton, gateway, gateway_metrics, images, output_format, requests, rounds, concurrency)
        )
    typer.echo(result.report())
    if json_path is not None:
        settings = {"requests": requests, "rounds": rounds, "concurrency": concurrency, "size": size}
        json_path.write_text(json.dumps(result.to_json() | {"settings": settings}, indent=2) + "\n")


@app.command("codecs")
def codec_candidates(
    sizes: Annotated[str, typer.Option(help="Square JPEG sizes in px.")] = "1024,2048",
    repeats: Annotated[int, typer.Option(help="Timed runs per photo; the median is kept.")] = 7,
) -> None:
    """The codec candidates for the per-image CPU work side by side: CPU milliseconds per image and
    output size of each PNG encoder, JPEG decoder and the matte's upsampling, on the photo set with
    u2netp's own mattes. Candidates that are not dependencies (imagecodecs, pyvips) are measured when
    installed: `.venv/bin/pip install imagecodecs pyvips pyvips-binary "numpy<2"`."""
    from matteserve.loadtest.codecs import measure_codecs

    measure_codecs([int(x) for x in parse_loads(sizes)], repeats)


@app.command("hostile")
def hostile_callers() -> None:
    """What hostile callers cost a real Triton + gateway on loopback: health-check latency while PNG
    bombs and valid 9 MP PNGs are refused, 16 concurrent unauthenticated 16 MiB calls, a stream that is
    never read; and first the CPU time of refusing a bomb's header. Run it on a quiet machine."""
    from matteserve.loadtest.hostile_bench import measure_hostile

    measure_hostile()
