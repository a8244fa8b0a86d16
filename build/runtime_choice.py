"""Choose how the CPU target runs the matting model: runtime, precision, threads and instances.

The build measures each candidate on this machine and keeps the fastest END TO END (JPEG decode,
resize, model, matte upsample and PNG encode all sharing the cores, as they do in Triton), among
those whose mattes pass a parity gate against the FP32 reference on held-out photos
(:mod:`matteserve.build.photos`). Model-only speed would mislead: a layout that gives the model
every core starves pre/post. The decision itself is :func:`choose`, a pure function of the
measurements, so it is tested without timing anything.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from matteserve.build.islands import PROBE_PHOTOS, fp32_islands
from matteserve.errors import ModelError
from matteserve.pipeline import tensor
from matteserve.pipeline.decode import ImageLimits
from matteserve.runtimes import Precision, Runtime, RuntimeSettings
from matteserve.segments import NodeRange, format_ranges
from matteserve.zoo import ModelSpec

logger = logging.getLogger(__name__)

# The gate, on alphas at the model's resolution against onnxruntime FP32: the share of pixels on the
# same side of 0.5 (IoU of the two foregrounds), and each photo's mean and 99th-percentile absolute
# difference. The differences are held so that a faster precision keeps the served mattes as close to
# rembg's as FP32's are: the fidelity tests allow a mean of 1.5/255 and a 99th percentile of 16/255
# against rembg, of which FP32 itself uses up to 0.7 and 7 (reduced JPEG decode, bilinear upsample),
# so a candidate may differ from FP32 by half of each. A budget, not a bound: percentiles do not add
# up, and the gate measures at the model's resolution on its own photos. (The first gate's mean of
# 3/255 over the photos let INT8 move edges by 40/255 at the 99th percentile.)
IOU_MEAN_LIMIT = 0.98
IOU_MIN_LIMIT = 0.95
MEAN_ABS_LIMIT = 0.75  # in 1/255, on every photo
P99_LIMIT = 8.0  # in 1/255, on every photo
REFERENCE = (Runtime.ONNXRUNTIME, Precision.FP32)
INT8 = (Runtime.OPENVINO, Precision.INT8)
MEASURE_SECONDS = 1.5  # end to end, per candidate
E2E_SIZE = 1024  # px, the JPEGs the end-to-end measurement sends
E2E_MIN_IMAGES = 4  # per candidate, however slow the model: fewer is noise


@dataclass(frozen=True)
class Capabilities:
    """What this machine offers the model: AVX-512 BF16 (or AMX), VNNI, the OpenVINO package, and
    NNCF to quantise for it."""

    bf16: bool
    vnni: bool
    openvino: bool
    nncf: bool = False

    @classmethod
    def detect(cls, cpuinfo: str | None = None) -> Capabilities:
        if cpuinfo is None:
            try:
                cpuinfo = Path("/proc/cpuinfo").read_text()
            except OSError:
                cpuinfo = ""
        flags = set(cpuinfo.split())
        return cls(
            bf16=bool(flags & {"avx512_bf16", "amx_bf16"}),
            vnni=bool(flags & {"avx512_vnni", "avx_vnni"}),
            openvino=importlib.util.find_spec("openvino") is not None,
            nncf=importlib.util.find_spec("nncf") is not None,
        )


@dataclass(frozen=True)
class Candidate:
    runtime: Runtime
    precision: Precision
    threads: int  # per matting instance
    instances: int
    fp32_nodes: tuple[NodeRange, ...] = ()  # BF16: node ranges kept in FP32

    @property
    def engine(self) -> tuple[Runtime, Precision]:
        return self.runtime, self.precision

    def settings(self) -> RuntimeSettings:
        # Served beside pre/post on the same cores: no busy-waiting threads.
        return RuntimeSettings(self.runtime, self.precision, self.threads, spin=False, fp32_nodes=self.fp32_nodes)

    def label(self) -> str:
        instances = f"{self.instances} instance{'s' if self.instances > 1 else ''}"
        threads = f"{self.threads} thread{'s' if self.threads > 1 else ''}"
        islands = f" (nodes {format_ranges(self.fp32_nodes)} in fp32)" if self.fp32_nodes else ""
        return f"{self.runtime.value} {self.precision.value}{islands}, {instances} x {threads}"


def engines(caps: Capabilities) -> list[tuple[Runtime, Precision]]:
    """(runtime, precision) pairs this machine can run, the reference first."""
    out = [REFERENCE]
    if caps.openvino:
        out.append((Runtime.OPENVINO, Precision.FP32))
        if caps.bf16:
            out.append((Runtime.OPENVINO, Precision.BF16))
        if caps.vnni and caps.nncf:
            out.append(INT8)
    return out


def layouts(cores: int) -> list[tuple[int, int]]:
    """(threads, instances): one instance on every core, several sharing them, and one instance
    that leaves cores to pre/post."""
    out = [(cores, 1)]
    for instances in (2, 4):
        if instances <= cores:
            out.append((cores // instances, instances))
    spare = max(1, cores // 4)
    if cores > spare:
        out.append((cores - spare, 1))
    return list(dict.fromkeys(out))


def candidates(
    cores: int, caps: Capabilities, runtime: Runtime | None = None, precision: Precision | None = None
) -> list[Candidate]:
    """Every candidate this machine can run, restricted to ``runtime`` / ``precision`` when given."""
    allowed = [e for e in engines(caps) if runtime in (None, e[0]) and precision in (None, e[1])]
    if not allowed:
        asked = " ".join(v.value for v in (runtime, precision) if v is not None)
        why = []
        if not caps.openvino:
            why.append("the openvino package is not installed")
        if precision is Precision.BF16 and not caps.bf16:
            why.append("this CPU has no AVX-512 BF16 or AMX")
        if precision is Precision.INT8 and not caps.vnni:
            why.append("this CPU has no VNNI")
        if precision is Precision.INT8 and not caps.nncf:
            why.append("the nncf package is not installed")
        raise ModelError(f"cannot serve {asked} here ({'; '.join(why) or 'no such combination'})")
    return [Candidate(r, p, t, i) for r, p in allowed for t, i in layouts(cores)]


@dataclass(frozen=True)
class PhotoGate:
    photo: str
    iou: float
    mean_abs: float  # in 1/255
    p99_abs: float  # in 1/255

    @property
    def excess(self) -> float:
        """How far this photo is from the gate's limits, each limit scaled to 1 (above 1: it fails)."""
        return max((1 - self.iou) / (1 - IOU_MIN_LIMIT), self.mean_abs / MEAN_ABS_LIMIT, self.p99_abs / P99_LIMIT)


@dataclass(frozen=True)
class GateReport:
    runtime: Runtime
    precision: Precision
    photos: tuple[PhotoGate, ...]
    model_images_per_s: float = 0.0  # model only, while the gate ran (batch 1, every core)
    fp32_nodes: tuple[NodeRange, ...] = ()

    @property
    def engine(self) -> tuple[Runtime, Precision]:
        return self.runtime, self.precision

    @property
    def iou_mean(self) -> float:
        return float(np.mean([p.iou for p in self.photos]))

    @property
    def iou_min(self) -> float:
        return min(p.iou for p in self.photos)

    @property
    def mean_abs(self) -> float:
        """The worst photo's mean absolute difference, in 1/255."""
        return max(p.mean_abs for p in self.photos)

    @property
    def p99(self) -> float:
        """The worst photo's 99th-percentile absolute difference, in 1/255."""
        return max(p.p99_abs for p in self.photos)

    @property
    def excess(self) -> float:
        """How far the candidate is from the gate's limits, its worst photo's and the mean IoU's (above 1: it fails)."""
        return max((1 - self.iou_mean) / (1 - IOU_MEAN_LIMIT), *(p.excess for p in self.photos))

    @property
    def passed(self) -> bool:
        """Every limit held: the mean IoU, and each photo's IoU, mean and 99th-percentile error."""
        return self.excess <= 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime.value,
            "precision": self.precision.value,
            "fp32_nodes": format_ranges(self.fp32_nodes),
            "iou_mean": self.iou_mean,
            "iou_min": self.iou_min,
            "mean_abs_255": self.mean_abs,
            "p99_255": self.p99,
            "passed": self.passed,
            "model_images_per_s": self.model_images_per_s,
            "photos": [asdict(p) for p in self.photos],
        }

    def line(self) -> str:
        islands = f" (nodes {format_ranges(self.fp32_nodes)} in fp32)" if self.fp32_nodes else ""
        return (
            f"gate {self.runtime.value} {self.precision.value}{islands}: "
            f"IoU mean {self.iou_mean:.4f} (>= {IOU_MEAN_LIMIT}), "
            f"min {self.iou_min:.4f} (>= {IOU_MIN_LIMIT}); worst photo's mean abs {self.mean_abs:.2f}/255 "
            f"(<= {MEAN_ABS_LIMIT:g}), p99 {self.p99:.1f}/255 (<= {P99_LIMIT:g}) "
            f"-> {'passed' if self.passed else 'FAILED'}; model only {self.model_images_per_s:.2f} images/s"
        )


def gate_limits() -> dict[str, float]:
    """The parity gate's limits, as the build's manifest records them."""
    return {"iou_mean": IOU_MEAN_LIMIT, "iou_min": IOU_MIN_LIMIT, "mean_abs_255": MEAN_ABS_LIMIT, "p99_255": P99_LIMIT}


def iou(expected: np.ndarray, actual: np.ndarray) -> float:
    """IoU of the foregrounds (alpha >= 0.5) of two uint8 mattes; 1.0 when both are empty."""
    a, b = expected >= 128, actual >= 128
    union = int((a | b).sum())
    return float((a & b).sum()) / union if union else 1.0


def gate(
    runtime: Runtime,
    precision: Precision,
    expected: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    model_images_per_s: float = 0.0,
    fp32_nodes: tuple[NodeRange, ...] = (),
) -> GateReport:
    """Compare uint8 mattes photo by photo (the same names in both)."""
    photos = tuple(compare(name, e, actual[name]) for name, e in expected.items())
    return GateReport(runtime, precision, photos, model_images_per_s, fp32_nodes)


def compare(photo: str, expected: np.ndarray, actual: np.ndarray) -> PhotoGate:
    """One photo's uint8 matte against its FP32 one."""
    diff = np.abs(expected.astype(int) - actual)
    return PhotoGate(photo, iou(expected, actual), float(diff.mean()), float(np.percentile(diff, 99)))


@dataclass(frozen=True)
class Measurement:
    candidate: Candidate
    images_per_s: float  # end to end


@dataclass(frozen=True)
class Choice:
    chosen: Candidate
    measurements: tuple[Measurement, ...]
    gates: tuple[GateReport, ...]
    capabilities: Capabilities
    measured: bool = True
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen.label(),
            "runtime": self.chosen.runtime.value,
            "precision": self.chosen.precision.value,
            "threads": self.chosen.threads,
            "instances": self.chosen.instances,
            "fp32_nodes": format_ranges(self.chosen.fp32_nodes),
            "measured": self.measured,
            "capabilities": asdict(self.capabilities),
            "gate_limits": gate_limits(),
            "gates": [g.to_dict() for g in self.gates],
            "end_to_end": [
                {**asdict(m.candidate), "label": m.candidate.label(), "images_per_s": m.images_per_s}
                for m in self.measurements
            ],
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        rows = [g.line() for g in self.gates]
        best = max((m.images_per_s for m in self.measurements), default=0.0)
        for m in sorted(self.measurements, key=lambda m: -m.images_per_s):
            mark = "<- chosen" if m.candidate == self.chosen else ""
            rows.append(f"  {m.candidate.label():64} {m.images_per_s:6.2f} images/s end to end {mark}")
        if not self.measured:
            rows.append(f"  not measured: {self.chosen.label()}")
        elif best:
            rows.append(f"chosen: {self.chosen.label()}")
        return "\n".join([*rows, *self.notes])


def choose(measurements: Sequence[Measurement], gates: Sequence[GateReport]) -> Candidate:
    """The fastest end-to-end candidate whose engine is the reference or passed its gate."""
    passed = {REFERENCE} | {g.engine for g in gates if g.passed}
    eligible = [m for m in measurements if m.candidate.engine in passed]
    if not eligible:
        raise ModelError("no runtime candidate passed the parity gate; build with --precision fp32")
    return max(eligible, key=lambda m: m.images_per_s).candidate


def _node_count(onnx_path: Path) -> int:
    import onnx

    return len(onnx.load(str(onnx_path), load_external_data=False).graph.node)


def _mattes(
    onnx: Path, spec: ModelSpec, settings: RuntimeSettings, inputs: Mapping[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], float]:
    """uint8 mattes of every input, one at a time, and the model-only images/s after a warm-up."""
    from matteserve.build import tuning
    from matteserve.stages import MattingRunner

    runner = MattingRunner(onnx, spec, settings=settings)
    out: dict[str, np.ndarray] = {}
    names = itertools.cycle(inputs)  # the warm-up takes the first input, which comes round again last

    def one() -> None:
        name = next(names)
        (out[name],) = runner.run([inputs[name]])

    return out, tuning.images_per_s(one, 1, seconds=0, at_least=len(inputs))


def end_to_end(onnx: Path, spec: ModelSpec, candidate: Candidate, jpegs: Sequence[bytes], seconds: float) -> float:
    """Images/s of JPEG in -> RGBA PNG out with the candidate's instances and one caller more than
    instances, so pre/post of one image overlap the model on another: a closed loop of threads in
    this process (decode, resize, the model and the PNG encoder release the GIL)."""
    from matteserve.stages import MattingRunner, postprocess, preprocess

    limits = ImageLimits()
    runners: queue.Queue[MattingRunner] = queue.Queue()
    for _ in range(candidate.instances):
        runners.put(MattingRunner(onnx, spec, settings=candidate.settings()))

    def one(data: bytes) -> None:
        pixels = preprocess(data, b"", spec, limits)
        runner = runners.get()
        try:
            (alpha,) = runner.run([pixels])
        finally:
            runners.put(runner)
        postprocess(data, b"", alpha, limits)

    callers = candidate.instances + 1
    clock: dict[str, float] = {}
    done = [0] * callers

    def start_clock() -> None:  # once every caller has run one image (warm-up)
        clock["start"] = time.perf_counter()

    warm = threading.Barrier(callers, action=start_clock)

    def caller(index: int) -> None:
        one(jpegs[index % len(jpegs)])
        warm.wait()
        i = index
        while time.perf_counter() - clock["start"] < seconds or sum(done) < E2E_MIN_IMAGES:
            one(jpegs[i % len(jpegs)])
            done[index] += 1
            i += 1

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - clock["start"])


def decide(
    onnx: Path,
    spec: ModelSpec,
    cores: int,
    caps: Capabilities,
    runtime: Runtime | None = None,
    precision: Precision | None = None,
    seconds: float = 1.5,
) -> Choice:
    """Gate every engine left open, measure every passing candidate end to end, keep the fastest.
    ``seconds <= 0`` measures nothing: the first candidate (the reference where allowed, on every
    core) is kept, still gated unless it is the reference."""
    from matteserve.build import photos

    options = candidates(cores, caps, runtime, precision)
    if seconds <= 0 and options[0].engine == REFERENCE:
        return Choice(options[0], (), (), caps, measured=False)
    try:
        gate_photos = photos.gate_photos()
    except ModelError as e:
        if any(c.engine == REFERENCE for c in options):
            logger.warning("%s; serving the onnxruntime FP32 reference unmeasured", e)
            first = next(c for c in options if c.engine == REFERENCE)
            return Choice(first, (), (), caps, measured=False, notes=(str(e),))
        raise

    def model_inputs(pictures: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            name: tensor.normalise(tensor.resize_for_model(Image.fromarray(px), spec, (px.shape[1], px.shape[0])), spec)
            for name, px in pictures.items()
        }

    inputs = model_inputs(gate_photos)
    expected, reference_speed = _mattes(onnx, spec, RuntimeSettings(threads=cores), inputs)
    gates = [gate(*REFERENCE, expected, expected, reference_speed)]
    notes: list[str] = []
    if any(c.engine == INT8 for c in options):
        from matteserve.build.quantize import quantize

        tuning = model_inputs(photos.gate())
        logger.info("quantising to INT8 with accuracy control on %d tuning photos (minutes)", len(tuning))
        try:
            quantize(onnx, spec, tuning, _mattes(onnx, spec, RuntimeSettings(threads=cores), tuning)[0])
        except Exception as e:  # a quantiser failure costs this candidate, not the build
            logger.warning("INT8 quantisation failed, not a candidate: %s", e, exc_info=True)
            notes.append(f"INT8 quantisation failed: {e}")
            options = [c for c in options if c.engine != INT8]
            if not options:
                raise ModelError(f"INT8 quantisation failed: {e}") from e
    for engine in dict.fromkeys(c.engine for c in options):
        if engine != REFERENCE:
            actual, speed = _mattes(onnx, spec, RuntimeSettings(*engine, threads=cores), inputs)
            gates.append(gate(*engine, expected, actual, speed))
            logger.info("%s", gates[-1].line())
    bf16 = (Runtime.OPENVINO, Precision.BF16)
    if any(g.engine == bf16 and not g.passed for g in gates):
        full = next(g for g in gates if g.engine == bf16)
        # Chunks are ranked on the photos furthest past the gate's limits; a candidate island must pass on all.
        worst = {p.photo for p in sorted(full.photos, key=lambda p: -p.excess)[:PROBE_PHOTOS]}

        def trial(fp32_nodes: tuple[NodeRange, ...], names: Sequence[str] = tuple(inputs)) -> GateReport:
            settings = RuntimeSettings(*bf16, threads=cores, fp32_nodes=fp32_nodes)
            actual, speed = _mattes(onnx, spec, settings, {n: inputs[n] for n in names})
            return gate(*bf16, {n: expected[n] for n in names}, actual, speed, fp32_nodes)

        logger.info("BF16 fails the gate: looking for the layers to keep in FP32")
        if (mixed := fp32_islands(_node_count(onnx), trial, lambda fp32: trial(fp32, tuple(worst)))) is not None:
            gates.append(mixed)
            options = [replace(c, fp32_nodes=mixed.fp32_nodes) if c.engine == bf16 else c for c in options]
    passed = {g.engine for g in gates if g.passed}
    if seconds <= 0:
        if options[0].engine not in passed:
            raise ModelError(f"{options[0].label()} fails the parity gate: {gates[-1].line()}")
        return Choice(options[0], (), tuple(gates), caps, measured=False, notes=tuple(notes))
    jpegs = [photos.jpeg(px, E2E_SIZE) for px in list(gate_photos.values())[:4]]
    measurements = []
    for candidate in options:
        if candidate.engine in passed:
            measurements.append(Measurement(candidate, end_to_end(onnx, spec, candidate, jpegs, seconds)))
            logger.info("%s: %.2f images/s end to end", candidate.label(), measurements[-1].images_per_s)
    if not measurements:
        raise ModelError("; ".join(g.line() for g in gates if not g.passed))
    return Choice(choose(measurements, gates), tuple(measurements), tuple(gates), caps, notes=tuple(notes))
