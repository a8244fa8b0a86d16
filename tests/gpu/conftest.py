"""GPU tests run only where an NVIDIA GPU and TensorRT's Python package exist; Triton serving tests
also need a Triton build with the TensorRT backend (the nvidia-pytriton wheel has none): set
MATTESERVE_TRITON_HOME to its install, e.g. /opt/tritonserver inside an NGC tritonserver container
whose Python has matteserve installed (pip install -e '.[dev]')."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from matteserve.build.gpu import stamp


@pytest.fixture(scope="session")
def gpu_runtime() -> stamp.Runtime:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pytest.skip("TensorRT's Python package is not installed (pip install tensorrt on a GPU machine)")
    runtime = stamp.current_runtime()
    if runtime is None:
        pytest.skip("no NVIDIA GPU with a CUDA runtime on this machine")
    return runtime


@pytest.fixture(scope="session")
def triton_home() -> Path:
    home = os.environ.get("MATTESERVE_TRITON_HOME")
    if not home:
        pytest.skip("MATTESERVE_TRITON_HOME is not set: Triton with the TensorRT backend (e.g. /opt/tritonserver)")
    path = Path(home)
    if not (path / "bin" / "tritonserver").is_file() or not (path / "backends" / "tensorrt").is_dir():
        pytest.skip(f"{path} has no bin/tritonserver with backends/tensorrt")
    return path
