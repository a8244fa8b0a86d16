"""Measure the model's images/s on this machine, and choose the CPU target's max batch size from it.

On a CPU, batching does not always pay: on the 2-core machines here u2netp runs fastest one image at
a time and slows down as the batch grows, while other CPUs gain a little up to batch 4. So the build
measures images/s per batch size and keeps the largest batch that costs no throughput.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from matteserve.runtimes import RuntimeSettings
from matteserve.stages import MattingRunner
from matteserve.zoo import ModelSpec

logger = logging.getLogger(__name__)

CANDIDATES = (1, 2, 4)
# A larger batch is kept while it reaches this share of the best images/s: batching also absorbs
# bursts, so a loss within measurement noise is worth it.
KEEP_WITHIN = 0.95


@dataclass(frozen=True)
class BatchMeasurement:
    batch: int
    images_per_s: float


def images_per_s(run: Callable[[], object], batch: int, seconds: float, at_least: int = 1) -> float:
    """Images/s of ``run``, one model call on ``batch`` images, on the wall clock: one call to warm
    up, untimed, then calls until ``seconds`` have passed and at least ``at_least`` images have run."""
    run()
    done, start = 0, time.perf_counter()
    while done < at_least or time.perf_counter() - start < seconds:
        run()
        done += batch
    return done / (time.perf_counter() - start)


def measure(
    onnx_path: Path, spec: ModelSpec, settings: RuntimeSettings, seconds: float = 1.5, inputs: Sequence[np.ndarray] = ()
) -> list[BatchMeasurement]:
    """Images/s per batch size, in the runtime and precision that will serve the model, on ``inputs``
    (model tensors, repeated to fill a batch; random ones at 640x480 when none are given)."""
    if not inputs:
        width, height = spec.input_size(640, 480)
        rng = np.random.default_rng(0)
        inputs = [rng.normal(size=(3, height, width)).astype(np.float32) for _ in range(max(CANDIDATES))]
    runner = MattingRunner(onnx_path, spec, settings=settings)
    out = []
    for batch in CANDIDATES:
        chunk = [inputs[i % len(inputs)] for i in range(batch)]
        out.append(BatchMeasurement(batch, images_per_s(partial(runner.run, chunk), batch, seconds)))
        logger.info("model only, batch %d: %.2f images/s", batch, out[-1].images_per_s)
    return out


def choose(measurements: list[BatchMeasurement]) -> int:
    best = max(m.images_per_s for m in measurements)
    return max(m.batch for m in measurements if m.images_per_s >= KEEP_WITHIN * best)
