"""What the serving stack itself costs per image, with the model out of the way.

Two measurements, both in CPU time (core-milliseconds), so they hold on a shared machine where
wall-clock figures do not:

* **stages**: the preprocess and postprocess functions in this process, one image after another,
  per output format: the decode / resize / encode work each python-backend step does per image;
* **stack**: a repository served by a real Triton, driven in closed loop through its gRPC API, per
  size and output format. Images/s, and the CPU time the Triton process and each python stub used
  (from /proc) divided by the images served: with the stand-in matting step
  (``matteserve build --model null``) that is the CPU-side ceiling of a node whose accelerator never
  limits it. Triton's own counters add each step's compute time per request (wall, not CPU).
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from matteserve import container, contract, stages
from matteserve.errors import MatteserveError
from matteserve.loadtest import triton_metrics
from matteserve.loadtest.runner import Bounds, closed_loop
from matteserve.options import OutputFormat, RequestOptions
from matteserve.pipeline.decode import ImageLimits
from matteserve.zoo import ModelSpec

logger = logging.getLogger(__name__)

FORMATS = tuple(OutputFormat)
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class StageCost:
    size: int
    format: str
    preprocess_core_ms: float
    postprocess_core_ms: float
    output_bytes: float  # mean encoded size

    @property
    def total_core_ms(self) -> float:
        return self.preprocess_core_ms + self.postprocess_core_ms


def median_core_ms(fn: Callable[[], object], repeats: int) -> float:
    """The median CPU time of ``repeats`` calls of ``fn``, in milliseconds of this process."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times) * 1000.0


def stage_costs(
    size: int,
    inputs: Sequence[bytes],
    alphas: Sequence[np.ndarray],
    spec: ModelSpec,
    formats: Sequence[OutputFormat] = FORMATS,
    repeats: int = 5,
) -> list[StageCost]:
    """Core-ms of preprocess and of postprocess per image (median of ``repeats`` per image, mean over
    the images), for every output format. ``alphas`` are the model's mattes for ``inputs``.

    Measured in a fresh interpreter with the serving processes' environment (glibc's allocator
    settings, one thread per instance), as a python stub runs the stages, and with no model runtime's
    threads charging this process's CPU clock."""
    args = (size, list(inputs), list(alphas), spec, tuple(formats), repeats)
    proc = subprocess.run(
        [sys.executable, "-c", _STAGE_COSTS_CHILD],
        input=pickle.dumps(args),
        capture_output=True,
        env=container.serving_environment(os.environ),
        check=False,
    )
    if proc.returncode != 0:
        raise MatteserveError(
            f"measuring the stage costs failed (exit code {proc.returncode}): "
            f"{proc.stderr.decode(errors='replace')[-2000:] or 'no output'}"
        )
    try:
        costs: list[StageCost] = pickle.loads(proc.stdout)
    except (pickle.UnpicklingError, EOFError) as e:
        raise MatteserveError(f"the stage-cost process wrote something other than its result: {e}") from e
    return costs


_STAGE_COSTS_CHILD = """
import pickle, sys
from matteserve.loadtest import stack
sys.stdout.buffer.write(pickle.dumps(stack.measure_stages(*pickle.loads(sys.stdin.buffer.read()))))
"""


def measure_stages(
    size: int,
    inputs: Sequence[bytes],
    alphas: Sequence[np.ndarray],
    spec: ModelSpec,
    formats: Sequence[OutputFormat],
    repeats: int,
) -> list[StageCost]:
    """:func:`stage_costs` in this process."""
    limits = ImageLimits()
    pre = statistics.mean(
        median_core_ms(partial(stages.preprocess, data, b"", spec, limits), repeats) for data in inputs
    )
    out = []
    for fmt in formats:
        options = RequestOptions(fmt).to_json()
        post, sizes = [], []
        for data, alpha in zip(inputs, alphas, strict=True):
            post.append(median_core_ms(partial(stages.postprocess, data, options, alpha, limits), repeats))
            sizes.append(len(stages.postprocess(data, options, alpha, limits).data))
        out.append(StageCost(size, fmt.value, pre, statistics.mean(post), statistics.mean(sizes)))
    return out


def model_alphas(repository: Path, spec: ModelSpec, inputs: Sequence[bytes]) -> list[np.ndarray]:
    """The repository's own mattes for ``inputs``: its ONNX in onnxruntime, or the stand-in's matte."""
    from matteserve import stand_in

    onnx = repository / contract.MATTING / "1" / "model.onnx"
    limits = ImageLimits()
    tensors = [stages.preprocess(data, b"", spec, limits) for data in inputs]
    if spec.stand_in or not onnx.is_file():
        return stand_in.StandInRunner().run_grouped(tensors)
    runner = stages.MattingRunner(onnx, spec, threads=1)
    return [runner.run([t])[0] for t in tensors]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * _TICK_S  # utime, stime


def child_pids(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (a tritonserver's children are its python-backend stubs)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            found.append(int(entry.name))
    return found


def _stub_model(pid: int) -> str:
    """The model a python-backend stub serves: its first argument is ``<repo>/<model>/<version>/model.py``."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    return Path(args[1].decode()).parent.parent.name if len(args) > 1 else "?"


def process_cpu(triton_pid: int) -> dict[str, float]:
    """CPU seconds so far: ``tritonserver`` itself (gRPC, scheduling, the ensemble, tensor copies)
    and each python stub by the model it serves (several instances of one model are added up)."""
    out = {"tritonserver": _cpu_seconds(triton_pid)}
    for child in child_pids(triton_pid):
        model = _stub_model(child)
        out[model] = out.get(model, 0.0) + _cpu_seconds(child)
    return out


@dataclass(frozen=True)
class StackResult:
    size: int
    format: str
    concurrency: int
    images: int  # completed OK during the measured run
    errors: int
    images_per_s: float
    # core-ms per image, by process: tritonserver, preprocess, matting, postprocess
    server_core_ms: dict[str, float]
    client_core_ms: float  # this process: the load generator's gRPC client
    compute_ms: dict[str, float] = field(default_factory=dict)  # Triton's compute_infer per request (wall)

    @property
    def server_total_core_ms(self) -> float:
        return sum(self.server_core_ms.values())

    @property
    def node_images_per_s_per_core(self) -> float:
        """Images/s one core of a node sustains for the server side of this stack."""
        total = self.server_total_core_ms
        return 1000.0 / total if total else 0.0


async def _run(
    url: str, inputs: Sequence[bytes], fmt: OutputFormat, concurrency: int, bounds: Bounds
) -> tuple[int, int]:
    from matteserve.loadtest.targets import TritonTarget

    target = TritonTarget(url, inputs, fmt)
    try:
        result = await closed_loop(target, inputs, concurrency, bounds)
    finally:
        await target.close()
    ok = sum(1 for s in result.samples if s.code == "OK")
    return ok, len(result.samples) - ok


def measure_stack(
    url: str,
    metrics_url: str,
    triton_pid: int,
    size: int,
    inputs: Sequence[bytes],
    formats: Sequence[OutputFormat],
    concurrency: int,
    seconds: float,
) -> list[StackResult]:
    """Closed loop through Triton's gRPC API per format; CPU of every process read around the run.

    Each run is preceded by a short warm-up that is not measured; the measured run has none, so
    every request it sends is one the CPU readings paid for."""
    out = []
    for fmt in formats:
        asyncio.run(_run(url, inputs, fmt, concurrency, Bounds(min(2.0, seconds), 1_000_000, warmup_s=0.0)))
        before, metrics_before = process_cpu(triton_pid), triton_metrics.scrape(metrics_url)
        client_start, start = time.process_time(), time.perf_counter()
        ok, errors = asyncio.run(_run(url, inputs, fmt, concurrency, Bounds(seconds, 1_000_000, warmup_s=0.0)))
        wall = time.perf_counter() - start
        client = time.process_time() - client_start
        after = process_cpu(triton_pid)
        metrics_after = triton_metrics.scrape_settled(metrics_url, metrics_before, ok)
        if errors:
            logger.warning("%d px %s: %d requests failed", size, fmt.value, errors)
        per_image = 1000.0 / max(ok, 1)
        compute = {}
        if metrics_before is not None and metrics_after is not None:
            compute = {
                row.model: row.compute_infer_ms
                for row in triton_metrics.breakdown(metrics_before, metrics_after)
                if row.model != contract.ENSEMBLE
            }
        result = StackResult(
            size=size,
            format=fmt.value,
            concurrency=concurrency,
            images=ok,
            errors=errors,
            images_per_s=ok / wall,
            server_core_ms={k: (after[k] - before.get(k, 0.0)) * per_image for k in after},
            client_core_ms=client * per_image,
            compute_ms=compute,
        )
        logger.info(
            "%d px %s: %.1f images/s, server %.1f core-ms/image, client %.1f",
            size,
            fmt.value,
            result.images_per_s,
            result.server_total_core_ms,
            result.client_core_ms,
        )
        out.append(result)
    return out
