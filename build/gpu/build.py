"""``matteserve build --target gpu``: ONNX -> checked graphs -> FP16 engine -> parity -> repository.

The graph steps run anywhere (:func:`prepare_graphs`); the engine steps need TensorRT and a GPU.
Nothing is written to ``out`` unless every parity check passed.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from matteserve import contract
from matteserve.build import onnx_prep, repository, weights
from matteserve.build.configs import ServingPlan, Target
from matteserve.build.gpu import engine, fp16, graph, parity, stamp
from matteserve.errors import ModelError
from matteserve.pipeline import tensor
from matteserve.pipeline.decode import ImageLimits
from matteserve.zoo import ModelSpec

logger = logging.getLogger(__name__)

# Sized for a GPU: at 320x320 a batch of 32 is 9.8 MB of uint8 input; TensorRT's kernels for
# u2netp-sized convolutions fill an H100 only from batches of a few tens.
GPU_MAX_BATCH = 32
SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # scikit-image's real photos


def sample_photos(folder: Path | None = None) -> dict[str, np.ndarray]:
    """The photos parity is measured on: every image in ``folder``, else scikit-image's."""
    from PIL import Image

    if folder is not None:
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
        if not paths:
            raise ModelError(f"--parity-photos {folder}: no .jpg/.png/.webp files there")
        return {p.stem: np.asarray(Image.open(p).convert("RGB")) for p in paths}
    try:
        import skimage.data
    except ImportError:
        raise ModelError(
            "the GPU build checks parity on photos: pip install 'matteserve[loadtest]' (scikit-image's sample "
            "photos) or give a folder of photos with --parity-photos DIR"
        ) from None
    return {name: getattr(skimage.data, name)() for name in SAMPLE_PHOTOS}


@dataclass(frozen=True)
class Graphs:
    """The rewritten ONNX files and the onnxruntime parity of each against the original."""

    fp32: Path  # uint8 in / alpha out, FP32: what TensorRT < 10 builds with the FP16 flag
    fp16: Path  # the same with FP16 weights and activations except the FP32 islands
    keep_fp32: tuple[str, ...]
    reports: tuple[parity.ParityReport, ...]
    nodes: dict[str, int]


def prepare_graphs(
    prepared: Path, spec: ModelSpec, photos: dict[str, np.ndarray], work: Path, keep_above: float = fp16.KEEP_ABOVE
) -> Graphs:
    """Simplify, fold and convert the dynamic-batch ONNX ``prepared``; check each step on ``photos``
    against the original in FP32 onnxruntime; raise :class:`ModelError` with the report if one fails."""
    if spec.size.static is None:
        raise ModelError(
            f"{spec.name}: the GPU target builds a TensorRT profile for one input size; models resized by a "
            "rule (short side / multiple) are served on the CPU target"
        )
    original = onnx.load(str(prepared))
    simplified = graph.simplify(onnx.load(str(prepared)), spec, work)
    pixels = parity.sample_pixels(photos, spec)
    reference = parity.reference(graph.session(prepared), spec)

    folded32 = graph.fold_io(simplified, spec)
    fp32_report = parity.check(
        "the simplified FP32 graph, uint8 in / alpha out, in onnxruntime",
        reference,
        parity.folded(graph.session(folded32)),
        pixels,
        *parity.fp32_limits(),
    )
    peaks = fp16.activation_peaks(simplified, [tensor.normalise(p, spec)[None] for p in pixels.values()])
    keep = fp16.fp32_islands(simplified, peaks, keep_above)
    converted = fp16.convert(simplified, keep)
    folded16 = graph.fold_io(converted.model, spec)
    fp16_report = parity.check(
        "the FP16 graph in onnxruntime (CPU: FP16 weights, FP32 arithmetic)",
        reference,
        parity.folded(graph.session(folded16)),
        pixels,
        *parity.fp16_limits(),
    )
    for report in (fp32_report, fp16_report):
        logger.info("%s", report.table())
        if not report.passed:
            raise ModelError(f"{spec.name}: a GPU graph rewrite changed the matte too much:\n{report.table()}")
    fp32_path, fp16_path = work / "model.fp32.onnx", work / "model.fp16.onnx"
    onnx.save(folded32, str(fp32_path))
    onnx.save(folded16, str(fp16_path))
    nodes = {
        "original": len(original.graph.node),
        "simplified": len(simplified.graph.node),
        "fp32": len(folded32.graph.node),
        "fp16": len(folded16.graph.node),
    }
    logger.info("%s: nodes %s; FP32 islands: %s", spec.name, nodes, sorted(keep) or "none")
    return Graphs(fp32_path, fp16_path, tuple(sorted(keep)), (fp32_report, fp16_report), nodes)


def fold_for_cpu(
    prepared: Path, spec: ModelSpec, out: Path, photos: dict[str, np.ndarray] | None = None
) -> parity.ParityReport:
    """The CPU target's ``fold_input`` graph: simplified and folded (uint8 in, alpha out) in FP32,
    checked against ``prepared`` on photos; raises :class:`ModelError` if it differs."""
    pixels = parity.sample_pixels(photos or sample_photos(), spec)
    with tempfile.TemporaryDirectory() as tmp:
        folded = graph.fold_io(graph.simplify(onnx.load(str(prepared)), spec, Path(tmp)), spec)
    report = parity.check(
        "the folded FP32 graph",
        parity.reference(graph.session(prepared), spec),
        parity.folded(graph.session(folded)),
        pixels,
        *parity.fp32_limits(),
    )
    logger.info("%s", report.table())
    if not report.passed:
        raise ModelError(f"{spec.name}: the folded graph changed the matte:\n{report.table()}")
    onnx.save(folded, str(out))
    return report


def engine_options(
    plan: ServingPlan, typing: engine.Typing, keep_fp32: tuple[str, ...], **extra: Any
) -> engine.EngineOptions:
    """The engine's profile is the plan's :attr:`ServingPlan.engine_profile_batches`: the same values
    that render config.pbtxt's max batch size, preferred batch sizes and CUDA graphs."""
    static = plan.spec.size.static
    assert static is not None  # prepare_graphs refused size-rule models
    _, opt, high = plan.engine_profile_batches
    return engine.EngineOptions(
        height=static[1],
        width=static[0],
        max_batch_size=high,
        opt_batch_size=extra.pop("opt_batch_size", None) or opt,
        typing=typing,
        keep_fp32=keep_fp32 if typing is engine.Typing.FP16_FLAG else (),
        **extra,
    )


def engine_parity(
    runner: engine.EngineRunner, graphs_ref: parity.Alphas, pixels: dict[str, np.ndarray]
) -> parity.ParityReport:
    return parity.check("the TensorRT FP16 engine", graphs_ref, runner.run, pixels, *parity.fp16_limits())


def _carried_engines(out: Path, graph_sha256: str, options: dict[str, Any], replaced: str) -> list[stamp.EngineStamp]:
    """Engines for other GPUs already in ``out``, built from the same graph with the same options:
    building on each kind of GPU in turn collects one plan per compute capability."""
    if not out.is_dir():
        return []
    kept = []
    for old in stamp.read_stamps(out):
        if old.compute_capability == replaced:
            continue
        if old.graph_sha256 == graph_sha256 and old.options == options:
            kept.append(old)
        else:
            logger.warning("dropping %s: built from another graph or with other options", old.plan)
    return kept


def is_fresh(out: Path, runtime: stamp.Runtime, source_sha256: str, max_batch_size: int | None) -> bool:
    """Whether ``out`` already has an engine for this GPU and TensorRT, made from this model."""
    try:
        current = stamp.check(stamp.read_stamps(out), runtime, out) if out.is_dir() else None
    except ModelError:
        return False
    if current is None or current.source_sha256 != source_sha256 or not repository.is_current(out):
        return False
    return max_batch_size is None or current.options.get("max_batch_size") == max_batch_size


def build_gpu(
    spec: ModelSpec,
    out: Path,
    onnx: Path | None = None,
    max_batch_size: int | None = None,
    limits: ImageLimits | None = None,
    parity_photos: Path | None = None,
    if_stale: bool = False,
    workspace_mib: int = 4096,
    optimisation_level: int = 3,
    **plan_overrides: Any,
) -> Path:
    source = weights.weights_path(spec, onnx)
    source_sha = weights.file_digest(source)
    trt_version = str(engine.tensorrt().__version__)
    from matteserve.build.gpu import cuda

    runtime = stamp.Runtime(trt_version, cuda.compute_capability())
    if if_stale and is_fresh(out, runtime, source_sha, max_batch_size):
        logger.info("%s already has an engine for TensorRT %s on sm %s: kept", out, *asdict(runtime).values())
        return out
    typing = engine.typing_for(trt_version)
    plan_file = stamp.plan_filename(runtime.compute_capability)
    photos = sample_photos(parity_photos)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepared = onnx_prep.prepare(source, spec, work / "prepared.onnx")
        graphs = prepare_graphs(prepared.path, spec, photos, work)
        built_from = graphs.fp16 if typing is engine.Typing.STRONG else graphs.fp32
        plan = ServingPlan.for_host(
            spec,
            Target.GPU,
            limits=limits or ImageLimits(),
            max_batch_size=max_batch_size or GPU_MAX_BATCH,
            engine_files=((runtime.compute_capability, plan_file),),
            **plan_overrides,
        )
        options = engine_options(
            plan, typing, graphs.keep_fp32, workspace_mib=workspace_mib, optimisation_level=optimisation_level
        )
        timing_cache = out.parent / f".{out.name}.timing-cache"
        built = engine.build_engine(built_from, work / plan_file, options, timing_cache)
        trtexec = engine.trtexec_command(built_from, work / plan_file, options, timing_cache)
        pixels = parity.sample_pixels(photos, spec)
        runner = engine.EngineRunner(built.plan, options)
        try:
            report = engine_parity(runner, parity.reference(graph.session(prepared.path), spec), pixels)
        finally:
            runner.close()
        logger.info("%s", report.table())
        if not report.passed:
            raise ModelError(
                f"{spec.name}: the FP16 engine does not match the FP32 model; nothing written:\n{report.table()}"
            )
        graph_sha = weights.file_digest(built_from)
        option_dict = json.loads(json.dumps(asdict(options)))
        new_stamp = stamp.EngineStamp(
            plan=plan_file,
            tensorrt=trt_version,
            compute_capability=runtime.compute_capability,
            source_sha256=source_sha,
            graph_sha256=graph_sha,
            options=option_dict,
            parity=report.to_dict(),
        )
        carried = _carried_engines(out, graph_sha, option_dict, runtime.compute_capability)
        plan = replace(plan, engine_files=tuple(sorted((s.compute_capability, s.plan) for s in [new_stamp, *carried])))
        manifest = {
            "model": spec.name,
            "target": Target.GPU.value,
            "source": str(source),
            "source_sha256": source_sha,
            "max_batch_size": plan.max_batch_size,
            "limits": asdict(plan.limits),
            "batch_parity_max_diff": prepared.batch_parity_max_diff,
            "graph_nodes": graphs.nodes,
            "fp32_islands": list(graphs.keep_fp32),
            "parity": [r.to_dict() for r in (*graphs.reports, report)],
            "trtexec": trtexec,
            "spec": spec.to_dict(),
        }
        with repository.staged(out) as staging:
            repository.fill(plan, built_from, staging, manifest)
            engines = staging / contract.MATTING / "1"
            shutil.copy2(built.plan, engines / plan_file)
            new_stamp.write(engines)
            for old in carried:
                shutil.copy2(out / contract.MATTING / "1" / old.plan, engines / old.plan)
                old.write(engines)
    logger.info("wrote the GPU model repository to %s (engines: %s)", out, dict(plan.engine_files))
    return out
