"""``matteserve build --target gpu``: ONNX -> checked graphs -> engine -> parity gate -> repository.

The graph steps run anywhere (:func:`prepare_graphs`); the engine steps need TensorRT and a GPU.

Engines live in a store shared by every node (a volume): ``<engines>/<model>/<key>/`` per
:attr:`stamp.Runtime.key` (GPU model, compute capability, TensorRT release), each built under an
exclusive lock so that pods starting together build it once. The served repository is rendered
from this image at every start (configs sized to the container's CPUs, adapters, manifest) with
the store's engine copied in: an upgraded image never serves old adapters, and an engine is reused
only while its stamp (GPU, TensorRT, source digest, build options) matches.

FP16 is gated on photos other than the ones that chose its FP32 islands. An FP16 graph or engine
that fails the gate is not served: the build makes an FP32 engine instead, logs it as a warning,
and records ``precision: fp32`` and the reason in the stamp and the manifest.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from matteserve import contract
from matteserve.build import locks, onnx_prep, photos, repository, weights
from matteserve.build.configs import ServingPlan, Target
from matteserve.build.gpu import engine, fp16, graph, parity, stamp, store
from matteserve.errors import ModelError
from matteserve.pipeline import tensor
from matteserve.pipeline.decode import ImageLimits
from matteserve.zoo import ModelSpec

logger = logging.getLogger(__name__)

# Sized for a GPU: at 320x320 a batch of 32 is 9.8 MB of uint8 input; TensorRT's kernels for
# u2netp-sized convolutions fill an H100 only from batches of a few tens.
GPU_MAX_BATCH = 32
PHOTOS_ENV = "MATTESERVE_PARITY_PHOTOS"


@dataclass(frozen=True)
class PhotoSets:
    calibration: dict[str, np.ndarray]  # chooses the FP32 islands
    gate: dict[str, np.ndarray]  # decides whether FP16 is served


def photo_sets(folder: Path | None = None) -> PhotoSets:
    """``folder`` (or ``$MATTESERVE_PARITY_PHOTOS``) with ``calibration/`` and ``gate/`` photo
    folders, as :func:`photos.write` lays them out and the GPU image bakes them in; without one,
    both sets from scikit-image."""
    folder = folder or (Path(os.environ[PHOTOS_ENV]) if os.environ.get(PHOTOS_ENV) else None)
    if folder is not None:
        calibration, gate = photos.read(folder / photos.CALIBRATION), photos.read(folder / photos.GATE)
        if not calibration or not gate:
            raise ModelError(
                f"parity photos {folder}: need .png/.jpg/.webp files in both {photos.CALIBRATION}/ and "
                f"{photos.GATE}/ (write them with: python build/photos.py {folder})"
            )
        return PhotoSets(calibration, gate)
    try:
        return PhotoSets(photos.calibration(), photos.gate())
    except ModelError as e:
        raise ModelError(
            f"{e}; or give a folder with --parity-photos DIR (the GPU image has them in ${PHOTOS_ENV})"
        ) from None


@dataclass(frozen=True)
class Graphs:
    """The rewritten ONNX files and the onnxruntime parity of each against the original."""

    fp32: Path  # uint8 in / alpha out, FP32: what TensorRT < 10 builds with the FP16 flag
    fp16: Path  # the same with FP16 weights and activations except the FP32 islands
    keep_fp32: tuple[str, ...]
    reports: tuple[parity.ParityReport, ...]  # the FP32 fold, then the FP16 gate (batch 1, batch N)
    nodes: dict[str, int]

    @property
    def fp16_passed(self) -> bool:
        return all(r.passed for r in self.reports[1:])


def gate_batch(plan_max: int) -> int:
    return min(parity.GATE_BATCH, plan_max)


def gate(
    what: str, expected: parity.Alphas, actual: parity.Alphas, pixels: dict[str, np.ndarray], batch: int
) -> tuple[parity.ParityReport, ...]:
    """The FP16 gate: one image at a time, and in batches of ``batch`` (the reference runs once)."""
    seen: dict[bytes, np.ndarray] = {}

    def reference(pixels: np.ndarray) -> np.ndarray:
        key = pixels.tobytes()
        if key not in seen:
            seen[key] = expected(pixels)
        return seen[key]

    return tuple(
        parity.check(what, reference, actual, pixels, *parity.fp16_limits(), batch=b) for b in sorted({1, batch})
    )


def prepare_graphs(
    prepared: Path,
    spec: ModelSpec,
    sets: PhotoSets,
    work: Path,
    keep_above: float = fp16.KEEP_ABOVE,
    batch: int = parity.GATE_BATCH,
) -> Graphs:
    """Simplify, fold and convert the dynamic-batch ONNX ``prepared``. The FP32 fold must match the
    original on the calibration photos (else :class:`ModelError`); the FP32 islands are chosen on
    them; the FP16 graph is gated on the gate photos at batch 1 and ``batch`` and the result
    reported (:attr:`Graphs.fp16_passed`), not raised: the caller falls back to FP32."""
    if spec.size.static is None:
        raise ModelError(
            f"{spec.name}: the GPU target builds a TensorRT profile for one input size; models resized by a "
            "rule (short side / multiple) are served on the CPU target"
        )
    original = onnx.load(str(prepared))
    simplified = graph.simplify(onnx.load(str(prepared)), spec, work)
    calibration = parity.sample_pixels(sets.calibration, spec)
    reference = parity.reference(graph.session(prepared), spec)

    folded32 = graph.fold_io(simplified, spec)
    fp32_report = parity.check(
        "the simplified FP32 graph, uint8 in / alpha out, in onnxruntime",
        reference,
        parity.folded(graph.session(folded32)),
        calibration,
        *parity.fp32_limits(),
    )
    logger.info("%s", fp32_report.table())
    if not fp32_report.passed:
        raise ModelError(f"{spec.name}: a GPU graph rewrite changed the matte too much:\n{fp32_report.table()}")
    peaks = fp16.activation_peaks(simplified, [tensor.normalise(p, spec)[None] for p in calibration.values()])
    keep = fp16.fp32_islands(simplified, peaks, keep_above)
    converted = fp16.convert(simplified, keep)
    folded16 = graph.fold_io(converted.model, spec)
    fp16_reports = gate(
        "the FP16 graph in onnxruntime (CPU: FP16 weights, FP32 arithmetic) on the gate photos",
        reference,
        parity.folded(graph.session(folded16)),
        parity.sample_pixels(sets.gate, spec),
        batch,
    )
    for report in fp16_reports:
        logger.info("%s", report.table())
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
    return Graphs(fp32_path, fp16_path, tuple(sorted(keep)), (fp32_report, *fp16_reports), nodes)


def fold_for_cpu(
    prepared: Path, spec: ModelSpec, out: Path, pictures: dict[str, np.ndarray] | None = None
) -> parity.ParityReport:
    """The CPU target's ``fold_input`` graph: simplified and folded (uint8 in, alpha out) in FP32,
    checked against ``prepared`` on photos; raises :class:`ModelError` if it differs."""
    pixels = parity.sample_pixels(pictures or photos.calibration(), spec)
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


@dataclass(frozen=True)
class Candidate:
    """One engine built and gated."""

    built: engine.BuiltEngine
    options: engine.EngineOptions
    graph: Path  # the ONNX TensorRT parsed
    reports: tuple[parity.ParityReport, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.reports)


@dataclass(frozen=True)
class Chosen:
    candidate: Candidate
    precision: str  # "fp16" or "fp32"
    fallback: str | None  # why FP16 is not served, when it is not
    rejected: tuple[parity.ParityReport, ...]  # the failed FP16 engine's reports


def choose_engine(graphs: Graphs, fp16_typing: engine.Typing, build: Callable[[engine.Typing], Candidate]) -> Chosen:
    """FP16 when the FP16 graph and then its engine pass the gate; else an FP32 engine, said loudly.
    Raises :class:`ModelError` only when the FP32 engine fails too (then TensorRT itself is wrong)."""
    rejected: tuple[parity.ParityReport, ...] = ()
    if graphs.fp16_passed:
        candidate = build(fp16_typing)
        if candidate.passed:
            return Chosen(candidate, "fp16", None, ())
        rejected = candidate.reports
        reason = "the FP16 engine failed the parity gate"
        failed = [r for r in candidate.reports if not r.passed]
    else:
        reason = "the FP16 graph failed the parity gate in onnxruntime"
        failed = [r for r in graphs.reports[1:] if not r.passed]
    logger.warning(
        "FP16 IS NOT SERVED: %s; building an FP32 engine instead (slower, same matte as the model). "
        "The repository's manifest and the engine stamp say precision fp32.\n%s",
        reason,
        "\n".join(r.table() for r in failed),
    )
    candidate = build(engine.Typing.FP32)
    if not candidate.passed:
        raise ModelError(
            "the FP32 TensorRT engine does not match the FP32 model either; nothing written:\n"
            + "\n".join(r.table() for r in candidate.reports)
        )
    return Chosen(candidate, "fp32", reason, rejected)


def engine_recipe(plan: ServingPlan, workspace_mib: int, optimisation_level: int) -> dict[str, Any]:
    """The build options a stored engine must have been built with to be reused for ``plan``."""
    options = engine_options(
        plan, engine.Typing.STRONG, (), workspace_mib=workspace_mib, optimisation_level=optimisation_level
    )
    keys = ("height", "width", "max_batch_size", "opt_batch_size", "workspace_mib", "optimisation_level")
    return {k: getattr(options, k) for k in keys}


def node_runtime() -> stamp.Runtime:
    """This node's GPU and TensorRT, the ``tensorrt`` package agreeing with ``libnvinfer``."""
    engine.tensorrt()  # says how to install it when missing
    runtime = stamp.current_runtime()
    if runtime is None:
        raise ModelError("--target gpu needs an NVIDIA GPU and its CUDA runtime on this machine")
    return runtime


def _build_into_store(
    spec: ModelSpec,
    source: Path,
    source_sha: str,
    plan: ServingPlan,
    runtime: stamp.Runtime,
    sets: PhotoSets,
    entry: Path,
    cache: Path,
    workspace_mib: int,
    optimisation_level: int,
) -> stamp.EngineStamp:
    """Build, gate and write an engine into ``store`` (the caller holds its lock)."""
    trt_version = str(engine.tensorrt().__version__)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepared = onnx_prep.prepare(source, spec, work / "prepared.onnx")
        batch = gate_batch(plan.max_batch_size)
        graphs = prepare_graphs(prepared.path, spec, sets, work, batch=batch)
        reference = parity.reference(graph.session(prepared.path), spec)
        gate_pixels = parity.sample_pixels(sets.gate, spec)

        def build(typing: engine.Typing) -> Candidate:
            built_from = graphs.fp16 if typing is engine.Typing.STRONG else graphs.fp32
            options = engine_options(
                plan, typing, graphs.keep_fp32, workspace_mib=workspace_mib, optimisation_level=optimisation_level
            )
            built = engine.build_engine(built_from, work / f"{typing.value}.plan", options, cache)
            runner = engine.EngineRunner(built.plan, options)
            try:
                what = f"the TensorRT engine ({typing.value}) on the gate photos"
                reports = gate(what, reference, runner.run, gate_pixels, batch)
            finally:
                runner.close()
            for report in reports:
                logger.info("%s", report.table())
            return Candidate(built, options, built_from, reports)

        chosen = choose_engine(graphs, engine.typing_for(trt_version), build)
        best = chosen.candidate
        new_stamp = stamp.EngineStamp(
            plan=store.PLAN,
            tensorrt=trt_version,
            compute_capability=runtime.compute_capability,
            source_sha256=source_sha,
            graph_sha256=weights.file_digest(best.graph),
            options=json.loads(json.dumps(asdict(best.options))),
            parity={"reports": [r.to_dict() for r in best.reports]},
            gpu=runtime.gpu,
            precision=chosen.precision,
            build={
                "fp16_fallback": chosen.fallback,
                "batch_parity_max_diff": prepared.batch_parity_max_diff,
                "graph_nodes": graphs.nodes,
                "fp32_islands": list(graphs.keep_fp32),
                "parity": [r.to_dict() for r in (*graphs.reports, *chosen.rejected, *best.reports)],
                "trtexec": engine.trtexec_command(best.graph, Path(store.PLAN), best.options, cache),
            },
        )
        store.put(entry, best.built.plan, best.graph, new_stamp)
    logger.info("stored the %s engine for %s in %s", chosen.precision, runtime.key, entry)
    return new_stamp


def render(plan: ServingPlan, spec: ModelSpec, source: Path, entry: Path, found: stamp.EngineStamp, out: Path) -> Path:
    """Write the repository from this image (configs, adapters, manifest) with the store's engine."""
    manifest = {
        "model": spec.name,
        "target": Target.GPU.value,
        "source": str(source),
        "source_sha256": found.source_sha256,
        "max_batch_size": plan.max_batch_size,
        "limits": asdict(plan.limits),
        "engine_store": str(entry),
        "tensorrt": found.tensorrt,
        "gpu": found.gpu,
        "compute_capability": found.compute_capability,
        "precision": found.precision,
        **found.build,
        "spec": spec.to_dict(),
    }
    plan_file = stamp.plan_filename(found.compute_capability)
    with repository.staged(out) as staging:
        repository.fill(plan, entry / store.GRAPH, staging, manifest)
        engines = staging / contract.MATTING / "1"
        shutil.copy2(entry / store.PLAN, engines / plan_file)
        replace(found, plan=plan_file).write(engines)
    return out


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
    engines: Path | None = None,
    runtime: stamp.Runtime | None = None,
    **plan_overrides: Any,
) -> Path:
    """Render ``out`` for this node, reusing the store's engine (``if_stale``) when it fits, else
    building one first. ``runtime`` is this node's GPU and TensorRT (read from the node when None)."""
    if spec.size.static is None:
        raise ModelError(f"{spec.name}: the GPU target needs a model with one fixed input size")
    source = weights.weights_path(spec, onnx)
    source_sha = weights.file_digest(source)
    runtime = runtime or node_runtime()
    engines = engines or store.default_engines(out)
    plan = ServingPlan.for_host(
        spec,
        Target.GPU,
        limits=limits or ImageLimits(),
        max_batch_size=max_batch_size or GPU_MAX_BATCH,
        engine_files=((runtime.compute_capability, stamp.plan_filename(runtime.compute_capability)),),
        **plan_overrides,
    )
    entry = store.entry(engines, spec, runtime)
    with locks.exclusive(entry):
        found = store.find(entry, runtime, source_sha, engine_recipe(plan, workspace_mib, optimisation_level))
        if found is not None and if_stale:
            logger.info(
                "reusing the %s engine in %s (TensorRT %s, %s)", found.precision, entry, found.tensorrt, runtime.gpu
            )
        else:
            found = _build_into_store(
                spec,
                source,
                source_sha,
                plan,
                runtime,
                photo_sets(parity_photos),
                entry,
                store.timing_cache(engines, runtime),
                workspace_mib,
                optimisation_level,
            )
        render(plan, spec, source, entry, found, out)
    if found.precision != "fp16":
        logger.warning("%s serves an FP32 engine: %s", out, found.build.get("fp16_fallback"))
    logger.info("wrote the GPU model repository to %s (engine %s, %s)", out, runtime.key, found.precision)
    return out
