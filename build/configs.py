"""Triton model configs rendered from one typed plan, never written by hand.

Every config is built as a dict, parsed into ``model_config_pb2.ModelConfig`` (which rejects unknown
fields and wrong types) and written in protobuf text format.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from matteserve import container, contract, stand_in
from matteserve.contract import Parameter
from matteserve.errors import ModelError
from matteserve.pipeline.decode import ImageLimits
from matteserve.runtimes import Precision, Runtime
from matteserve.segments import format_ranges
from matteserve.zoo import ModelSpec

# On GPU the pre/post python steps take batches of at most this many (see ServingPlan).
GPU_PYTHON_MAX_BATCH = 2
GPU_TYPICAL_BATCH = 8


class Target(str, enum.Enum):
    CPU = "cpu"  # matting in onnxruntime inside a python-backend model
    GPU = "gpu"  # matting as a TensorRT engine (tensorrt_plan backend)


@dataclass(frozen=True)
class ServingPlan:
    """Everything the four configs are rendered from. ``max_batch_size`` is the single source of
    truth for the matting step's batching: its config and (on GPU) the engine's optimisation profile
    (:attr:`engine_profile_batches`) and CUDA graphs come from it. On GPU the python pre/post steps
    take :attr:`python_max_batch_size` (they work through a batch one image at a time, so a large
    batch only keeps other instances idle); the engine's dynamic batcher is what combines requests."""

    spec: ModelSpec
    target: Target = Target.CPU
    max_batch_size: int = 4
    queue_delay_us: int = 0
    # GPU engine: a short wait lets concurrent requests meet in one batch at little latency cost.
    engine_queue_delay_us: int = 200
    # GPU engine: instances per GPU, so one batch's copies overlap another's compute.
    engine_instances: int = 2
    max_queue_size: int = 64
    # Triton lets a request's own timeout only shorten its queue's default timeout, never set one
    # where the default is 0: this default is a ceiling no caller reaches, so the deadlines the
    # gateway sends always apply.
    queue_timeout_us: int = 600_000_000
    matting_instances: int = 1
    matting_threads: int = 0  # the runtime's threads per instance; 0 = all cores
    # CPU: the engine the matting model runs in, as the build chose it (matteserve.build.runtime_choice).
    runtime: Runtime = Runtime.ONNXRUNTIME
    precision: Precision = Precision.FP32
    fp32_nodes: tuple[tuple[int, int], ...] = ()  # BF16: graph node ranges kept in FP32
    preprocess_instances: int = 1
    postprocess_instances: int = 1
    limits: ImageLimits = field(default_factory=ImageLimits)
    onnx_filename: str = "model.onnx"
    # Triton queue priorities, 1 = highest; 0 levels = none. With 2, requests without a priority are
    # interactive (1) and bulk callers send priority 2, so interactive calls overtake queued bulk work
    # (the gateway sends big images at 2, so they cannot hold small ones up in any queue).
    priority_levels: int = 2
    # GPU: (compute capability, plan file) for every engine built, rendered as cc_model_filenames.
    engine_files: tuple[tuple[str, str], ...] = ()
    # CPU: serve the folded graph (matteserve.build.gpu.graph.fold_io) that takes uint8 pixels, as
    # the GPU engine does; off by default (see docs/gpu.md for what it changed on CPU).
    fold_input: bool = False

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ModelError(f"max batch size must be >= 1, got {self.max_batch_size}")
        for name in ("matting_instances", "preprocess_instances", "postprocess_instances"):
            if getattr(self, name) < 1:
                raise ModelError(f"{name.replace('_', ' ')} must be >= 1")

    @property
    def uint8_pixels(self) -> bool:
        """Whether preprocess sends the resized HxWx3 uint8 pixels (the engine normalises them)
        rather than the normalised 3xHxW float32 tensor."""
        return self.target is Target.GPU or self.fold_input

    @property
    def pixel_dims(self) -> list[int]:
        static = self.spec.size.static
        height, width = (static[1], static[0]) if static else (-1, -1)
        return [height, width, 3] if self.uint8_pixels else [3, height, width]

    @property
    def alpha_dims(self) -> list[int]:
        static = self.spec.size.static
        return [static[1], static[0]] if static else [-1, -1]

    @property
    def cuda_graph_batches(self) -> list[int]:
        """Batch sizes given a captured CUDA graph: powers of two up to the max, and the max. They
        are also the engine's preferred batch sizes, so the batcher forms batches a graph covers."""
        sizes = [b for b in (1, 2, 4, 8, 16, 32, 64, 128) if b < self.max_batch_size]
        return [*sizes, self.max_batch_size]

    @property
    def python_max_batch_size(self) -> int:
        return min(GPU_PYTHON_MAX_BATCH, self.max_batch_size) if self.target is Target.GPU else self.max_batch_size

    @property
    def typical_batch_size(self) -> int:
        """The batch the engine's profile is tuned for (its ``opt``): the largest CUDA-graph size up to
        :data:`GPU_TYPICAL_BATCH`, what a busy node's batcher forms within a few hundred µs."""
        return max(b for b in self.cuda_graph_batches if b <= GPU_TYPICAL_BATCH)

    @property
    def engine_profile_batches(self) -> tuple[int, int, int]:
        """(min, opt, max) batch of the engine's optimisation profile."""
        return 1, self.typical_batch_size, self.max_batch_size

    @classmethod
    def for_host(cls, spec: ModelSpec, target: Target, cores: int | None = None, **overrides: Any) -> ServingPlan:
        """Instance counts derived from the container's CPU budget (:func:`container.cpu_cores`: the
        cgroup quota or ``MATTESERVE_CPUS``, not the host's cores). On CPU one matting instance uses
        every core through onnxruntime's thread pool; pre/post get a core per ~4 (they are ~10% of
        the work), and postprocess at least two instances, so a small image's encode never waits
        behind a big image's (the gateway lets one big image in at a time)."""
        cores = cores or container.cpu_cores()
        defaults: dict[str, Any] = {
            "target": target,
            "matting_threads": cores,
            "preprocess_instances": max(1, cores // 4),
            "postprocess_instances": max(2, cores // 4),
        }
        if target is Target.GPU:
            # The GPU does the model; the CPU cores go to decode and encode (post is the heavier one).
            pre, post = container.gpu_python_instances(cores)
            defaults |= {"preprocess_instances": pre, "postprocess_instances": post, "priority_levels": 2}
        return cls(spec=spec, **(defaults | overrides))


def _tensor(name: str, data_type: str, dims: list[int]) -> dict[str, Any]:
    return {"name": name, "data_type": data_type, "dims": dims}


# Each tensor is declared once, so a step's output and the next step's input cannot disagree.
_REQUEST = [_tensor(contract.IMAGE, "TYPE_STRING", [1]), _tensor(contract.OPTIONS, "TYPE_STRING", [1])]
_ANSWER = [_tensor(contract.RESULT, "TYPE_STRING", [1]), _tensor(contract.META, "TYPE_STRING", [1])]
_PREPROCESS_MS = _tensor(contract.PREPROCESS_MS, "TYPE_FP32", [1])


def _pixels(plan: ServingPlan) -> dict[str, Any]:
    return _tensor(contract.PIXELS, "TYPE_UINT8" if plan.uint8_pixels else "TYPE_FP32", plan.pixel_dims)


def _alpha(plan: ServingPlan) -> dict[str, Any]:
    """UINT8 from the CPU model, FP32 in [0, 1] from the GPU engine."""
    return _tensor(contract.ALPHA, "TYPE_FP32" if plan.target is Target.GPU else "TYPE_UINT8", plan.alpha_dims)


def _batching(plan: ServingPlan, queue_delay_us: int | None = None) -> dict[str, Any]:
    """Every queue honours the per-request ``timeout`` the gateway sends (the caller's remaining
    deadline): a request still queued when it expires is rejected there, before any compute."""
    batching: dict[str, Any] = {
        "max_queue_delay_microseconds": plan.queue_delay_us if queue_delay_us is None else queue_delay_us,
        "default_queue_policy": {
            "max_queue_size": plan.max_queue_size,
            "timeout_action": "REJECT",
            "default_timeout_microseconds": plan.queue_timeout_us,
            "allow_timeout_override": True,
        },
    }
    if plan.priority_levels:
        batching |= {"priority_levels": plan.priority_levels, "default_priority_level": 1}
    return batching


def _python_model(name: str, plan: ServingPlan, instances: int, extra: dict[Parameter, str]) -> dict[str, Any]:
    spec = json.dumps(plan.spec.to_dict(), sort_keys=True)
    parameters = {Parameter.SPEC: spec, Parameter.LIMITS: json.dumps(asdict(plan.limits))} | extra
    return {
        "name": name,
        "backend": "python",
        "max_batch_size": plan.python_max_batch_size,
        "dynamic_batching": _batching(plan),
        "instance_group": [{"count": instances, "kind": "KIND_CPU"}],
        "parameters": {str(k): {"string_value": v} for k, v in parameters.items()},
    }


def preprocess_config(plan: ServingPlan) -> model_config_pb2.ModelConfig:
    pixels = {Parameter.PIXELS: "uint8" if plan.uint8_pixels else "float32"}
    cfg = _python_model(contract.PREPROCESS, plan, plan.preprocess_instances, pixels)
    cfg["input"] = _REQUEST
    cfg["output"] = [_pixels(plan), _PREPROCESS_MS]
    return parse(cfg)


def _engine_config(plan: ServingPlan) -> dict[str, Any]:
    """The TensorRT engine on the GPU: uint8 PIXELS in, FP32 ALPHA in [0, 1] out (see
    matteserve.build.gpu.graph.fold_io); CUDA graphs and warm-up for the common batch sizes of a
    fixed-size model, so the model reports ready only once its kernels are loaded and tuned."""
    if not plan.engine_files:
        raise ModelError("a GPU plan needs the engine files it serves (compute capability -> plan file)")
    cfg: dict[str, Any] = {
        "name": contract.MATTING,
        "platform": "tensorrt_plan",
        "max_batch_size": plan.max_batch_size,
        "dynamic_batching": _batching(plan, plan.engine_queue_delay_us)
        | {"preferred_batch_size": plan.cuda_graph_batches},
        "instance_group": [{"count": plan.engine_instances, "kind": "KIND_GPU"}],
        "cc_model_filenames": dict(plan.engine_files),
        "input": [_pixels(plan)],
        "output": [_alpha(plan)],
    }
    if -1 not in plan.pixel_dims:
        batches = plan.cuda_graph_batches
        # graph_lower_bound: a batch between two graph sizes runs the larger graph, padded, instead of
        # falling back to launching kernels one by one.
        lower = [1, *(b + 1 for b in batches[:-1])]
        dims = {contract.PIXELS: {"dim": plan.pixel_dims}}
        cfg["optimization"] = {
            "cuda": {
                "graphs": True,
                "graph_spec": [
                    {"batch_size": b, "input": dims, "graph_lower_bound": {"batch_size": low, "input": dims}}
                    for low, b in zip(lower, batches, strict=True)
                ],
            }
        }
        cfg["model_warmup"] = [
            {
                "name": f"batch{b}",
                "batch_size": b,
                "inputs": {contract.PIXELS: {"data_type": "TYPE_UINT8", "dims": plan.pixel_dims, "random_data": True}},
            }
            for b in sorted(set(plan.engine_profile_batches))
        ]
    return cfg


def matting_config(plan: ServingPlan) -> model_config_pb2.ModelConfig:
    if plan.target is Target.GPU:
        return parse(_engine_config(plan))
    runtime = (
        {Parameter.RUNTIME: stand_in.RUNTIME}
        if plan.spec.stand_in
        else {
            Parameter.ONNX: plan.onnx_filename,
            Parameter.RUNTIME: plan.runtime.value,
            Parameter.PRECISION: plan.precision.value,
            Parameter.FP32_NODES: format_ranges(plan.fp32_nodes),
        }
    )
    cfg = _python_model(
        contract.MATTING, plan, plan.matting_instances, runtime | {Parameter.THREADS: str(plan.matting_threads)}
    )
    cfg["input"] = [_pixels(plan)]
    cfg["output"] = [_alpha(plan)]
    return parse(cfg)


def postprocess_config(plan: ServingPlan) -> model_config_pb2.ModelConfig:
    cfg = _python_model(contract.POSTPROCESS, plan, plan.postprocess_instances, {})
    cfg["input"] = [*_REQUEST, _alpha(plan), _PREPROCESS_MS]
    cfg["output"] = _ANSWER
    return parse(cfg)


def ensemble_config(plan: ServingPlan) -> model_config_pb2.ModelConfig:
    """Each step's tensors are the ensemble's tensors of the same names. The original bytes feed both
    preprocess and postprocess, so no full-size pixels cross steps."""
    steps = (preprocess_config(plan), matting_config(plan), postprocess_config(plan))
    cfg = {
        "name": contract.ENSEMBLE,
        "platform": "ensemble",
        # Triton refuses an ensemble whose max batch exceeds a step's; callers send one image each.
        "max_batch_size": plan.python_max_batch_size,
        "input": _REQUEST,
        "output": _ANSWER,
        "ensemble_scheduling": {
            "step": [
                {
                    "model_name": step.name,
                    "model_version": -1,
                    "input_map": {t.name: t.name for t in step.input},
                    "output_map": {t.name: t.name for t in step.output},
                }
                for step in steps
            ]
        },
    }
    return parse(cfg)


def parse(cfg: dict[str, Any]) -> model_config_pb2.ModelConfig:
    return json_format.ParseDict(cfg, model_config_pb2.ModelConfig())


def to_pbtxt(config: model_config_pb2.ModelConfig) -> str:
    return text_format.MessageToString(config)


def from_pbtxt(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())
