"""Choose the CPU target's max batch size by measuring the model on this machine.

On a CPU, batching does not always pay: on the 2-core machines here u2netp runs fastest one image at
a time and slows down as the batch grows, while other CPUs gain a little up to batch 4. So the build
measures images/s per batch size and keeps the largest batch that costs no throughput.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
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


def measure(
    onnx_path: Path, spec: ModelSpec, settings: RuntimeSettings, seconds: float = 1.5
) -> list[BatchMeasurement]:
    """Images/s per batch size, in the runtime and precision that will serve the model."""
    runner = MattingRunner(onnx_path, spec, settings=settings)
    width, height = spec.input_size(640, 480)
    rng = np.random.default_rng(0)
    out = []
    for batch in CANDIDATES:
        inputs = [rng.normal(size=(3, height, width)).astype(np.float32) for _ in range(batch)]
        runner.run(inputs)  # warm-up
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            runner.run(inputs)
            done += batch
        out.append(BatchMeasurement(batch, done / (time.perf_counter() - start)))
        logger.info("batch %d: %.2f images/s", batch, out[-1].images_per_s)
    return out


def choose(measurements: list[BatchMeasurement]) -> int:
    best = max(m.images_per_s for m in measurements)
    return max(m.batch for m in measurements if m.images_per_s >= KEEP_WITHIN * best)
