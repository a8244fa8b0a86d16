"""What a TensorRT engine is bound to, written next to the plan and checked before serving it.

A plan runs only under the TensorRT version that built it and on GPUs of the compute capability it
was built on. Each ``model.sm<cc>.plan`` in ``matting/1/`` has a ``model.sm<cc>.plan.json`` stamp;
:func:`check_repository` refuses to serve when no stamp matches this node's GPU and TensorRT, and
when the repository has no build manifest (nothing was built there, or a build never finished).

This node's TensorRT has one source: the ``libnvinfer`` Triton's TensorRT backend loads. The build's
``tensorrt`` Python package must be the same release (:func:`agreed_tensorrt`), checked when the
image is built and again before every engine build.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from matteserve import contract
from matteserve.build import repository as repo_files
from matteserve.errors import ModelError

logger = logging.getLogger(__name__)

STAMP_SUFFIX = ".json"


class EngineMismatch(ModelError):
    """No engine in the repository was built for this GPU and TensorRT."""


def plan_filename(compute_capability: str) -> str:
    return f"model.sm{compute_capability.replace('.', '')}.plan"


@dataclass(frozen=True)
class Runtime:
    """What this node would load an engine with."""

    tensorrt: str
    compute_capability: str
    gpu: str = ""  # the GPU's model name, e.g. "NVIDIA H100 80GB HBM3"

    @property
    def key(self) -> str:
        """Names this node's engines and timing caches in a shared store: GPU model, compute
        capability and TensorRT release (``sm90-nvidia-h100-80gb-hbm3-trt10.8.0``). GPUs of one
        capability run each other's engines, but TensorRT tuned the kernels for the one it built on."""
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu.lower()).strip("-") or "gpu"
        release = ".".join(self.tensorrt.split(".")[:3])
        return f"sm{self.compute_capability.replace('.', '')}-{gpu}-trt{release}"


@dataclass(frozen=True)
class EngineStamp:
    plan: str  # file name in matting/1/
    tensorrt: str
    compute_capability: str
    source_sha256: str  # the model ONNX the engine was made from
    graph_sha256: str  # the rewritten ONNX TensorRT parsed (matting/1/model.onnx)
    options: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    gpu: str = ""
    # "fp16", or "fp32" when FP16 failed the parity gate and the build fell back (see build.py).
    precision: str = "fp16"
    build: dict[str, Any] = field(default_factory=dict)  # graph sizes, FP32 islands, every parity report

    def matches(self, runtime: Runtime) -> bool:
        return self.compute_capability == runtime.compute_capability and same_tensorrt(self.tensorrt, runtime.tensorrt)

    def write(self, folder: Path) -> Path:
        path = folder / (self.plan + STAMP_SUFFIX)
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> EngineStamp:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise ModelError(f"{path} is not an engine stamp ({e}); rebuild the engine") from e


def same_tensorrt(a: str, b: str) -> bool:
    """Engines are not portable across TensorRT releases: major.minor.patch must be equal."""
    return a.split(".")[:3] == b.split(".")[:3]


def read_stamps(repository: Path) -> list[EngineStamp]:
    folder = repository / contract.MATTING / "1"
    return [EngineStamp.read(p) for p in sorted(folder.glob("*.plan" + STAMP_SUFFIX))]


def check(stamps: list[EngineStamp], runtime: Runtime, repository: Path) -> EngineStamp:
    """The stamp of the engine this node will load, or :class:`EngineMismatch` saying what to do."""
    for stamp in stamps:
        if stamp.matches(runtime):
            if not (repository / contract.MATTING / "1" / stamp.plan).is_file():
                raise EngineMismatch(f"{stamp.plan} is stamped but missing from {repository}; rebuild it")
            return stamp
    built = ", ".join(f"{s.plan}: TensorRT {s.tensorrt} on compute capability {s.compute_capability}" for s in stamps)
    raise EngineMismatch(
        f"no TensorRT engine in {repository} fits this node (TensorRT {runtime.tensorrt}, compute capability "
        f"{runtime.compute_capability}); it has {built or 'none'}. Rebuild on this node with: "
        f"matteserve build --target gpu --if-stale --out {repository}"
    )


# Newest first: TensorRT 11 ships libnvinfer.so.11, 10 ships .so.10.
LIBNVINFER_NAMES = ("libnvinfer.so.11", "libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so")


def decode_library_version(v: int) -> str:
    """``getInferLibVersion()`` -> "major.minor.patch": major*1000+minor*100+patch up to 8.x,
    major*10000+minor*100+patch from 10."""
    major, rest = (v // 10000, v % 10000) if v >= 10000 else (v // 1000, v % 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


def tensorrt_library_version(load: Callable[[str], Any] = ctypes.CDLL) -> str | None:
    """The version of the ``libnvinfer`` this node loads (what Triton's TensorRT backend links)."""
    for name in (ctypes.util.find_library("nvinfer"), *LIBNVINFER_NAMES):
        if not name:
            continue
        try:
            lib = load(name)
        except OSError:
            continue
        return decode_library_version(int(lib.getInferLibVersion()))
    return None


def tensorrt_package_version() -> str | None:
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return str(trt.__version__)


def agreed_tensorrt(library: str | None, package: str | None) -> str | None:
    """This node's one TensorRT version: libnvinfer's, which the build's ``tensorrt`` package
    (when installed) must equal in major.minor.patch; :class:`EngineMismatch` if they differ."""
    if library and package and not same_tensorrt(library, package):
        raise EngineMismatch(
            f"the tensorrt Python package is {package} but this node's libnvinfer is {library}: an engine built "
            f"with the package would not load in Triton. Install the same release: pip install 'tensorrt=={library}.*'"
        )
    return library or package


def current_runtime() -> Runtime | None:
    """This node's TensorRT and GPU 0, or None where either is missing."""
    from matteserve.build.gpu import cuda

    version = agreed_tensorrt(tensorrt_library_version(), tensorrt_package_version())
    if version is None:
        return None
    try:
        return Runtime(version, cuda.compute_capability(), cuda.device_name())
    except ModelError as e:
        logger.info("no usable GPU: %s", e)
        return None


def check_repository(repository: Path, runtime: Runtime | None = None) -> EngineStamp | None:
    """For a GPU repository: the stamp that fits this node, or :class:`EngineMismatch`. For a CPU
    repository: None. Refuses a folder without a build manifest (missing, empty, or a build that
    never finished) and a GPU repository on a node without GPU or TensorRT."""
    manifest = repo_files.read_manifest(repository)
    if manifest is None:
        raise EngineMismatch(
            f"{repository} holds no built model repository (no {repo_files.MANIFEST}); build it with: "
            f"matteserve build --target gpu --if-stale --out {repository}"
        )
    stamps = read_stamps(repository)
    if not stamps and manifest.get("target") != "gpu":
        return None
    runtime = runtime or current_runtime()
    if runtime is None:
        raise EngineMismatch(
            f"{repository} holds TensorRT engines but this node has no NVIDIA GPU with TensorRT; serve a CPU "
            "repository here (matteserve build --target cpu)"
        )
    return check(stamps, runtime, repository)
