"""The GPU-node check's load driver against a real Triton: Triton's HTTP binary-tensor requests
return real cutouts, and the server's CPU time per image is read from /proc."""

from __future__ import annotations

import importlib.util
import io
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from matteserve.tritonserver import TritonServer

pytestmark = pytest.mark.integration
CHECK = Path(__file__).resolve().parents[2] / "deploy" / "gpu-node-check" / "check.py"


def load_check() -> object:
    spec = importlib.util.spec_from_file_location("gpu_node_check", CHECK)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_node_check_measures_images_and_server_cpu_through_triton_http(
    triton: TritonServer, make_photo: Callable[..., bytes]
) -> None:
    check = load_check()
    assert triton.process is not None
    photo = make_photo(640, 480)
    cutout = check.infer(triton.cfg.http_port, photo, "png")  # type: ignore[attr-defined]
    with Image.open(io.BytesIO(cutout)) as image:
        assert (image.mode, image.size) == ("RGBA", (640, 480))
    result = check.measure(triton.cfg.http_port, triton.process.pid, "640", photo, "webp", 2, 1.0)  # type: ignore[attr-defined]
    assert result.errors == 0
    assert result.images >= 2, "each sender completes at least the request it started"
    assert result.server_core_ms_per_image > 0, "tritonserver and its python stubs used CPU for these images"
