"""``matteserve build``: model name or user ONNX -> a complete, verified Triton model repository."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from matteserve.build import onnx_prep, repository, runtime_choice, tuning, weights
from matteserve.build.configs import ServingPlan, Target
from matteserve.errors import ModelError
from matteserve.pipeline.decode import ImageLimits
from matteserve.runtimes import Precision, Runtime
from matteserve.zoo import ModelSpec

logger = logging.getLogger(__name__)


def build(
    spec: ModelSpec,
    out: Path,
    target: Target = Target.CPU,
    onnx: Path | None = None,
    max_batch_size: int | None = None,
    limits: ImageLimits | None = None,
    runtime: Runtime | None = None,
    precision: Precision | None = None,
    measure_seconds: float = runtime_choice.MEASURE_SECONDS,
    capabilities: runtime_choice.Capabilities | None = None,
    **plan_overrides: Any,
) -> Path:
    """Fetch or take the ONNX, prepare it for dynamic batching, choose the runtime, precision and
    thread layout (CPU target: :mod:`.runtime_choice`, among those ``runtime`` / ``precision``
    leave open; ``measure_seconds=0`` keeps the reference unmeasured), choose the batch size and
    write the repository. ``max_batch_size=None`` measures the model here and chooses. The GPU
    target (TensorRT engines) is built by :mod:`matteserve.build.gpu.build`; ``plan_overrides`` there
    may also carry its engine options (``if_stale``, ``parity_photos``, ``engines``, ...)."""
    if spec.stand_in:
        if target is not Target.CPU:
            raise ModelError(
                "the stand-in matting step runs in Triton's python backend: build it with --target cpu "
                "(it measures the CPU side of any node, GPU nodes included)"
            )
        return build_stand_in(spec, out, max_batch_size, limits, **plan_overrides)
    if target is Target.GPU:
        from matteserve.build.gpu.build import build_gpu

        return build_gpu(spec, out, onnx=onnx, max_batch_size=max_batch_size, limits=limits, **plan_overrides)
    caps = capabilities or runtime_choice.Capabilities.detect()
    if plan_overrides.get("fold_input"):  # the folded graph is a rewrite of the one INT8 would quantise
        if precision is Precision.INT8:
            raise ModelError("--fold-input serves a rewritten graph in FP32 or BF16: not with --precision int8")
        caps = replace(caps, nncf=False)
    source = weights.weights_path(spec, onnx)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = onnx_prep.prepare(source, spec, Path(tmp) / "model.onnx")
        choice = runtime_choice.decide(
            prepared.path, spec, os.cpu_count() or 1, caps, runtime, precision, measure_seconds
        )
        logger.info("runtime choice:\n%s", choice.summary())
        chosen: dict[str, Any] = {
            "runtime": choice.chosen.runtime,
            "precision": choice.chosen.precision,
            "fp32_nodes": choice.chosen.fp32_nodes,
            "matting_threads": choice.chosen.threads,
            "matting_instances": choice.chosen.instances,
        }
        plan_overrides = chosen | plan_overrides
        plan = ServingPlan.for_host(spec, target, limits=limits or ImageLimits(), **plan_overrides)
        measurements: list[tuning.BatchMeasurement] = []
        if max_batch_size is None:
            settings = choice.chosen.settings()
            measurements = tuning.measure(prepared.path, spec, replace(settings, threads=plan.matting_threads))
            max_batch_size = tuning.choose(measurements)
            logger.info("chose max batch size %d from %s", max_batch_size, measurements)
        plan = ServingPlan.for_host(
            spec, target, limits=limits or ImageLimits(), max_batch_size=max_batch_size, **plan_overrides
        )
        manifest = {
            "model": spec.name,
            "target": target.value,
            "source": str(source),
            "source_sha256": weights.file_digest(source),
            "max_batch_size": plan.max_batch_size,
            "limits": asdict(plan.limits),
            "batch_parity_max_diff": prepared.batch_parity_max_diff,
            "batch_measurements": [asdict(m) for m in measurements],
            "runtime_choice": choice.to_dict(),
            "spec": spec.to_dict(),
        }
        served = prepared.path
        if plan.fold_input:
            from matteserve.build.gpu.build import fold_for_cpu

            served = Path(tmp) / "folded.onnx"
            manifest["fold_parity"] = fold_for_cpu(prepared.path, spec, served).to_dict()
        return repository.write(plan, served, out, manifest)


# The stand-in has no model to measure; this is the largest batch the CPU tests serve with.
STAND_IN_MAX_BATCH = 4


def build_stand_in(
    spec: ModelSpec, out: Path, max_batch_size: int | None, limits: ImageLimits | None, **plan_overrides: Any
) -> Path:
    """A repository whose matting step is the stand-in (matteserve.stand_in): no weights, no ONNX.

    It is laid out as a GPU node's repository: preprocess sends uint8 pixels, as it does to a GPU
    engine (a quarter of the float32 input's bytes), and the pre/post instance counts are the GPU
    target's, so the stack it measures is the CPU side of a GPU node on this machine's cores."""
    gpu = ServingPlan.for_host(spec, Target.GPU)
    plan_overrides.setdefault("fold_input", True)
    plan_overrides.setdefault("preprocess_instances", gpu.preprocess_instances)
    plan_overrides.setdefault("postprocess_instances", gpu.postprocess_instances)
    plan = ServingPlan.for_host(
        spec,
        Target.CPU,
        limits=limits or ImageLimits(),
        max_batch_size=max_batch_size or STAND_IN_MAX_BATCH,
        **plan_overrides,
    )
    manifest = {
        "model": spec.name,
        "target": Target.CPU.value,
        "stand_in": True,
        "max_batch_size": plan.max_batch_size,
        "limits": asdict(plan.limits),
        "batch_measurements": [],
        "spec": spec.to_dict(),
    }
    logger.warning("building the STAND-IN matting step: a fixed matte, no model (for measuring the stack)")
    return repository.write(plan, None, out, manifest)
