"""Build and run a TensorRT engine with the TensorRT Python API (imported only when called).

Precision: TensorRT 10 and later build a STRONGLY_TYPED network from the FP16 graph of
:mod:`matteserve.build.gpu.fp16` (TensorRT 11 builds nothing else), so the engine computes in the
precision that was checked in onnxruntime, the measured FP32 islands included. TensorRT 8/9 build
the FP32 graph with the FP16 builder flag, and pin the same FP32 nodes (and the folded pre/post
arithmetic) with layer precisions under OBEY_PRECISION_CONSTRAINTS.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from matteserve import contract
from matteserve.errors import ModelError

logger = logging.getLogger(__name__)

# Layers whose names start with this come from matteserve.build.gpu.graph.fold_io.
FOLDED_PREFIX = "mx_"


class Typing(str, enum.Enum):
    STRONG = "strongly-typed"  # the FP16 ONNX decides every layer's precision
    FP16_FLAG = "fp16-flag"  # weakly typed FP32 ONNX, BuilderFlag.FP16, pinned FP32 layers
    FP32 = "fp32"  # the fallback when FP16 fails the parity gate: the FP32 ONNX, no FP16 anywhere


def tensorrt() -> ModuleType:
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ModelError(
            "--target gpu needs TensorRT's Python package on a machine with an NVIDIA GPU: pip install tensorrt "
            "(its version must equal the TensorRT in the Triton that will serve the engine)"
        ) from e
    return trt


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:3] if p.isdigit())


def typing_for(version: str) -> Typing:
    return Typing.STRONG if version_tuple(version)[0] >= 10 else Typing.FP16_FLAG


@dataclass(frozen=True)
class EngineOptions:
    """What the engine is built with; ``max_batch_size`` is the plan's, the same value that renders
    config.pbtxt's ``max_batch_size``."""

    height: int
    width: int
    max_batch_size: int
    opt_batch_size: int
    workspace_mib: int = 4096
    optimisation_level: int = 3  # TensorRT's default; 4-5 search longer for faster kernels
    typing: Typing = Typing.STRONG
    keep_fp32: tuple[str, ...] = ()  # FP16_FLAG only: nodes pinned to FP32

    def __post_init__(self) -> None:
        if not 1 <= self.opt_batch_size <= self.max_batch_size:
            raise ModelError(f"the opt batch size must be in 1..{self.max_batch_size}, got {self.opt_batch_size}")
        if not 0 <= self.optimisation_level <= 5:
            raise ModelError("the builder optimisation level must be in 0..5")

    def shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, self.height, self.width, 3)

    @property
    def profile(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) shapes of the input, the engine's one optimisation profile."""
        return self.shape(1), self.shape(self.opt_batch_size), self.shape(self.max_batch_size)


def trtexec_command(onnx: Path, plan: Path, options: EngineOptions, timing_cache: Path) -> str:
    """The same build with NVIDIA's trtexec, for those who prefer it."""

    def dims(shape: Iterable[int]) -> str:
        return "x".join(str(d) for d in shape)

    low, opt, high = options.profile
    args = [
        "trtexec",
        f"--onnx={onnx}",
        f"--saveEngine={plan}",
        f"--minShapes={contract.PIXELS}:{dims(low)}",
        f"--optShapes={contract.PIXELS}:{dims(opt)}",
        f"--maxShapes={contract.PIXELS}:{dims(high)}",
        f"--memPoolSize=workspace:{options.workspace_mib}",
        f"--builderOptimizationLevel={options.optimisation_level}",
        f"--timingCacheFile={timing_cache}",
    ]
    if options.typing is Typing.STRONG:
        args.append("--stronglyTyped")
    elif options.typing is Typing.FP32:
        args += ["--stronglyTyped", "--noTF32"]
    else:
        args += ["--fp16", "--precisionConstraints=obey"]
        if options.keep_fp32:
            args.append("--layerPrecisions=" + ",".join(f"{n}:fp32" for n in options.keep_fp32))
    return " ".join(args)


def _parser_errors(parser: Any) -> list[str]:
    out = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        where = getattr(error, "node_name", lambda: "")() or f"node {error.node()}"
        op = getattr(error, "node_operator", lambda: "")()
        out.append(f"{where}{f' ({op})' if op else ''}: {error.desc()} [code {error.code()}]")
    return out


def _pin_fp32(trt: ModuleType, network: Any, keep: set[str]) -> int:
    """FP16_FLAG builds: the folded arithmetic and the measured FP32 nodes run in FP32."""
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        name = layer.name.lstrip("/")
        if name.startswith(FOLDED_PREFIX) or name in keep or name.split("_output")[0] in keep:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                if layer.get_output(j).dtype in (trt.float32, trt.float16):
                    layer.set_output_type(j, trt.float32)
            pinned += 1
    return pinned


@dataclass(frozen=True)
class BuiltEngine:
    plan: Path
    tensorrt_version: str
    seconds: float
    plan_bytes: int


def build_engine(onnx: Path, plan: Path, options: EngineOptions, timing_cache: Path) -> BuiltEngine:
    """Parse ``onnx``, build with ``options`` and write the serialized engine to ``plan``. The
    timing cache is read if present and written back, so a rebuild skips kernel timing."""
    trt = tensorrt()
    log = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(log)
    flags = 0
    strong = options.typing is Typing.STRONG or (
        options.typing is Typing.FP32 and typing_for(trt.__version__) is Typing.STRONG
    )
    if strong:
        # TensorRT 11 builds strongly typed networks only; the FP32 ONNX then computes in FP32.
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    elif hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)  # TensorRT 8/9 need it said
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx)):
        errors = _parser_errors(parser)
        for error in errors:
            logger.error("TensorRT ONNX parser: %s", error)
        raise ModelError(f"TensorRT could not parse {onnx}: {len(errors)} error(s):\n  " + "\n  ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    config.builder_optimization_level = options.optimisation_level
    if options.typing is Typing.FP32:
        config.clear_flag(trt.BuilderFlag.TF32)  # FP32 means FP32: TF32 is on by default on Ampere+
    if options.typing is Typing.FP16_FLAG:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        logger.info("pinned %d layers to FP32", _pin_fp32(trt, network, set(options.keep_fp32)))
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, False)
    profile = builder.create_optimization_profile()
    low, opt, high = options.profile
    profile.set_shape(contract.PIXELS, low, opt, high)
    config.add_optimization_profile(profile)
    logger.info(
        "building the TensorRT %s engine (%s); equivalent: %s",
        trt.__version__,
        options.typing.value,
        trtexec_command(onnx, plan, options, timing_cache),
    )
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError("TensorRT failed to build the engine; its log above says why")
    plan.parent.mkdir(parents=True, exist_ok=True)
    plan.write_bytes(bytes(memoryview(serialized)))
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    timing_cache.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    took = time.perf_counter() - start
    logger.info("engine built in %.0f s: %s (%d bytes)", took, plan, plan.stat().st_size)
    return BuiltEngine(plan, str(trt.__version__), took, plan.stat().st_size)


class EngineRunner:
    """Runs a plan on GPU 0: uint8 PIXELS [N, H, W, 3] -> FP32 ALPHA [N, H, W]."""

    def __init__(self, plan: Path, options: EngineOptions) -> None:
        from matteserve.build.gpu import cuda

        trt = tensorrt()
        self._log = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._log)
        self.engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise ModelError(f"TensorRT could not load {plan}; it was built by another TensorRT version or GPU")
        self.context = self.engine.create_execution_context()
        self.options = options
        self.stream = cuda.Stream()
        high = options.shape(options.max_batch_size)
        self.pixels = cuda.DeviceBuffer(int(np.prod(high)))
        self.alpha = cuda.DeviceBuffer(int(np.prod(high[:3])) * 4)
        self.context.set_tensor_address(contract.PIXELS, self.pixels.ptr.value)
        self.context.set_tensor_address(contract.ALPHA, self.alpha.ptr.value)

    def run(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        if pixels.shape[1:] != self.options.shape(1)[1:] or not 1 <= len(pixels) <= self.options.max_batch_size:
            raise ModelError(f"the engine takes [1..{self.options.max_batch_size}, H, W, 3], got {pixels.shape}")
        self.context.set_input_shape(contract.PIXELS, pixels.shape)
        self.pixels.upload_from(pixels.ctypes.data, pixels.nbytes)
        if not self.context.execute_async_v3(self.stream.handle.value):
            raise ModelError("TensorRT failed to run the engine")
        self.stream.synchronize()
        alpha = np.empty(pixels.shape[:3], np.float32)
        self.alpha.download_into(alpha.ctypes.data, alpha.nbytes)
        return alpha

    def close(self) -> None:
        self.pixels.free()
        self.alpha.free()
        self.stream.destroy()
