"""The engines that run a matting ONNX on the CPU, behind one small interface.

Each runtime is its own function that opens a :class:`Session`; :class:`~matteserve.stages.MattingRunner`
turns a session's raw outputs into alpha mattes, so a runtime only has to run the graph.
The runtime packages are imported when a session is opened, never at import time.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from matteserve.errors import ModelError

logger = logging.getLogger(__name__)


class Runtime(str, enum.Enum):
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"


class Precision(str, enum.Enum):
    FP32 = "fp32"
    BF16 = "bf16"  # OpenVINO's CPU plugin on CPUs with AVX-512 BF16 or AMX
    # OpenVINO on the quantised copy of the graph the build made and gated (INT8_MODEL beside the
    # ONNX): int8 convolutions on CPUs with VNNI, FP32 where quantising hurt the matte.
    INT8 = "int8"


INT8_MODEL = "model-int8.xml"  # with its weights in model-int8.bin


def int8_files(onnx_path: Path) -> tuple[Path, Path]:
    """The quantised OpenVINO model of ``onnx_path``, kept beside it: its graph (.xml), its weights (.bin)."""
    graph = onnx_path.with_name(INT8_MODEL)
    return graph, graph.with_suffix(".bin")


@dataclass(frozen=True)
class RuntimeSettings:
    """How the matting model runs: engine, arithmetic and threads (0 = every core)."""

    runtime: Runtime = Runtime.ONNXRUNTIME
    precision: Precision = Precision.FP32
    threads: int = 0
    # Busy-waiting worker threads answer the next call a little sooner but hold their cores while
    # decode, resize and PNG encode wait for them: off wherever those stages share the cores.
    spin: bool = True
    # BF16 only: ranges of the graph's nodes kept in FP32 (see matteserve.segments), found by the build
    # where BF16 everywhere fails the parity gate.
    fp32_nodes: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if self.runtime is Runtime.ONNXRUNTIME and self.precision is not Precision.FP32:
            raise ModelError(f"onnxruntime serves the model in FP32 only; {self.precision.value} needs openvino")
        if self.fp32_nodes and self.precision is not Precision.BF16:
            raise ModelError("FP32 node ranges only mean something inside a BF16 model")
        if self.threads < 0:
            raise ModelError(f"threads must be >= 0 (0 = every core), got {self.threads}")


class Session(Protocol):
    input_name: str
    output_names: tuple[str, ...]

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """The model's outputs, in graph order, for one input batch."""
        ...


class OnnxruntimeSession:
    def __init__(self, onnx_path: Path, settings: RuntimeSettings) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = settings.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not settings.spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = tuple(o.name for o in self.session.get_outputs())

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        return list(self.session.run(None, {self.input_name: batch}))


class OpenvinoSession:
    """OpenVINO's CPU plugin, one stream (Triton's instances give the parallel requests), threads not
    pinned to cores (the pre/post processes move between the same cores). With ``fp32_nodes`` the
    graph runs as consecutive pieces, BF16 and FP32 in turn, each piece's outputs feeding the next."""

    def __init__(self, onnx_path: Path, settings: RuntimeSettings) -> None:
        try:
            import openvino as ov
        except ImportError as e:
            raise ModelError("the openvino runtime needs the openvino package: pip install openvino") from e
        import onnx

        from matteserve import segments

        core = ov.Core()

        def compile_piece(model: object, fp32: bool) -> Any:
            config: dict[str, object] = {
                "PERFORMANCE_HINT": "LATENCY",
                "NUM_STREAMS": 1,
                "ENABLE_CPU_PINNING": False,
                "INFERENCE_PRECISION_HINT": "f32" if fp32 else "bf16",
            }
            if settings.threads:
                config["INFERENCE_NUM_THREADS"] = settings.threads
            return core.compile_model(model, "CPU", config)

        graph = onnx.load(str(onnx_path))
        self.input_name = next(
            i.name for i in graph.graph.input if i.name not in {t.name for t in graph.graph.initializer}
        )
        self.output_names = tuple(o.name for o in graph.graph.output)
        if settings.precision is Precision.INT8:
            quantised, weights = int8_files(onnx_path)
            if not (quantised.is_file() and weights.is_file()):
                raise ModelError(f"{quantised} (and its .bin) is missing: rebuild the repository (matteserve build)")
            # Quantised layers run in int8 whatever the hint; the layers left in FP32 stay FP32.
            models = [(core.read_model(str(quantised)), True)]
        elif settings.fp32_nodes:
            pieces = segments.split(graph, settings.fp32_nodes)
            models = [(core.read_model(p.model.SerializeToString(), b""), p.fp32) for p in pieces]
        else:
            models = [(core.read_model(graph.SerializeToString(), b""), settings.precision is not Precision.BF16)]
        self.pieces = []
        for model, fp32 in models:
            compiled = compile_piece(model, fp32)
            self.pieces.append((compiled, compiled.create_infer_request()))

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        # Between pieces the output tensors are handed on as they are, not copied (the cuts of a
        # U-Net carry its full-resolution skip connections); only the model's outputs are copied out.
        values: dict[str, Any] = {self.input_name: batch}
        for compiled, request in self.pieces:
            request.infer({i.get_any_name(): values[i.get_any_name()] for i in compiled.inputs})
            for output in compiled.outputs:
                values[output.get_any_name()] = request.get_tensor(output)
        return [np.array(values[name].data) for name in self.output_names]


_OPENERS: dict[Runtime, Callable[[Path, RuntimeSettings], Session]] = {
    Runtime.ONNXRUNTIME: OnnxruntimeSession,
    Runtime.OPENVINO: OpenvinoSession,
}


def open_session(onnx_path: Path, settings: RuntimeSettings) -> Session:
    return _OPENERS[settings.runtime](onnx_path, settings)
