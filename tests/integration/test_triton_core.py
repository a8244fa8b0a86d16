"""The CPU model repository served by a real Triton: photos, reference parity, batching, outputs."""

from __future__ import annotations

import io
import re
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from matteserve.build.weights import weights_path
from matteserve.contract import Meta
from matteserve.loadtest import stack
from matteserve.tritonserver import TritonServer
from matteserve.zoo import get_spec

from ..conftest import runs_with_serving_environment  # type: ignore[import-not-found]

Infer = Callable[..., tuple[bytes, Meta]]


def metric(triton: TritonServer, name: str, model: str) -> float:
    with urllib.request.urlopen(triton.cfg.metrics_url, timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf'^{name}{{model="{model}",version="1"}} (\S+)$', text, re.MULTILINE)
    assert m, f"{name} for {model} not on /metrics"
    return float(m.group(1))


def rembg_reference_alpha(data: bytes, model: str = "u2netp") -> np.ndarray:
    """u2netp (or u2net) as rembg runs it: full decode, LANCZOS to 320, divide by max, ImageNet
    mean/std, min-max, truncate to uint8, LANCZOS back to the original size."""
    spec = get_spec(model)
    session = ort.InferenceSession(str(weights_path(spec)), providers=["CPUExecutionProvider"])
    img = Image.open(io.BytesIO(data)).convert("RGB")
    im = np.array(img.resize((320, 320), Image.Resampling.LANCZOS))
    im = im / np.max(im)
    x = np.zeros(im.shape)
    for c in range(3):
        x[:, :, c] = (im[:, :, c] - spec.mean[c]) / spec.std[c]
    pred = session.run(None, {"input.1": x.transpose(2, 0, 1)[None].astype(np.float32)})[0][:, 0]
    pred = np.squeeze((pred - pred.min()) / (pred.max() - pred.min()))
    mask = Image.fromarray((pred * 255).astype("uint8"), "L").resize(img.size, Image.Resampling.LANCZOS)
    return np.asarray(mask)


def test_real_photos_come_back_at_their_size_with_a_plausible_alpha(
    triton_infer: Infer, photos: dict[str, bytes]
) -> None:
    for name, data in photos.items():
        result, meta = triton_infer(data, {"format": "png"})
        out = Image.open(io.BytesIO(result))
        original = Image.open(io.BytesIO(data))
        assert (out.format, out.mode, out.size) == ("PNG", "RGBA", original.size), name
        assert (meta.width, meta.height) == original.size
        assert meta.content_type == "image/png"
        alpha = np.asarray(out)[:, :, 3]
        # A subject and a background both clearly present (the rocket fills under 2% of its frame).
        assert (alpha > 200).mean() > 0.01, name
        assert (alpha < 30).mean() > 0.05, name


def test_the_subject_is_opaque_and_the_backdrop_clear(triton_infer: Infer, photos: dict[str, bytes]) -> None:
    result, _ = triton_infer(photos["astronaut"], {"format": "raw"})
    alpha = np.frombuffer(result, np.uint8).reshape(512, 512)
    assert alpha[100:140, 200:260].mean() > 240  # her face
    assert alpha[10:60, 450:500].mean() < 15  # the white studio backdrop, top right


def test_served_alpha_matches_the_rembg_reference(
    triton_infer: Infer, photos: dict[str, bytes], make_photo: Callable[..., bytes]
) -> None:
    """Tolerance: mean |diff| <= 1.5/255 and 99th percentile <= 16/255. The differences sit on the
    matte's edges: matteserve upsamples bilinearly and decodes big JPEGs at a reduced DCT scale,
    rembg resizes with LANCZOS from the full decode."""
    cases = {**photos, "astronaut-1536": make_photo(1536, 1536)}
    for name, data in cases.items():
        result, meta = triton_infer(data, {"format": "raw"})
        served = np.frombuffer(result, np.uint8).reshape(meta.height, meta.width).astype(int)
        diff = np.abs(served - rembg_reference_alpha(data).astype(int))
        assert diff.mean() <= 1.5, (name, diff.mean())
        assert np.percentile(diff, 99) <= 16, (name, np.percentile(diff, 99))


@pytest.mark.parametrize(
    ("options", "fmt", "mode", "content_type"),
    [
        ({"format": "png"}, "PNG", "RGBA", "image/png"),
        ({"format": "mask"}, "PNG", "L", "image/png"),
        ({"format": "webp", "quality": 80}, "WEBP", "RGBA", "image/webp"),
        ({"format": "jpeg", "background": "#00ff00", "quality": 85}, "JPEG", "RGB", "image/jpeg"),
    ],
)
def test_every_output_format(
    triton_infer: Infer,
    make_photo: Callable[..., bytes],
    options: dict[str, Any],
    fmt: str,
    mode: str,
    content_type: str,
) -> None:
    result, meta = triton_infer(make_photo(300, 200), options)
    out = Image.open(io.BytesIO(result))
    assert (out.format, out.mode, out.size) == (fmt, mode, (300, 200))
    assert meta.content_type == content_type
    assert meta.preprocess_ms > 0
    assert meta.postprocess_ms > 0


def test_jpeg_output_shows_the_background_colour_where_the_backdrop_was(
    triton_infer: Infer, photos: dict[str, bytes]
) -> None:
    result, _ = triton_infer(photos["astronaut"], {"format": "jpeg", "background": "#00ff00"})
    corner = np.asarray(Image.open(io.BytesIO(result)))[10:60, 450:500].astype(int)
    assert np.abs(corner.mean(axis=(0, 1)) - [0, 255, 0]).max() < 25


def test_exif_rotated_photo_comes_back_upright(triton_infer: Infer, photo_arrays: dict[str, np.ndarray]) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(photo_arrays["chelsea"]).save(buf, "JPEG", exif=exif.tobytes())  # stored 451x300
    result, meta = triton_infer(buf.getvalue(), {"format": "mask"})
    assert Image.open(io.BytesIO(result)).size == (300, 451)
    assert (meta.width, meta.height) == (300, 451)


def test_concurrent_requests_are_batched(
    triton: TritonServer, triton_infer: Infer, make_photo: Callable[..., bytes]
) -> None:
    before = {k: metric(triton, k, "matting") for k in ("nv_inference_count", "nv_inference_exec_count")}
    images = [make_photo(256 + 8 * i, 256) for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda d: triton_infer(d, {"format": "raw"}), images))
    assert [r[1].width for r in results] == [256 + 8 * i for i in range(12)]
    inferences = metric(triton, "nv_inference_count", "matting") - before["nv_inference_count"]
    executions = metric(triton, "nv_inference_exec_count", "matting") - before["nv_inference_exec_count"]
    assert inferences == 12
    assert executions < inferences, f"{executions} model executions for {inferences} images: nothing was batched"


def test_tritonserver_and_every_stub_run_with_the_served_allocator_settings(triton: TritonServer) -> None:
    assert triton.process is not None
    pids = [triton.process.pid, *stack.child_pids(triton.process.pid)]
    assert len(pids) >= 4, "tritonserver and a stub per python model instance"
    for pid in pids:
        assert runs_with_serving_environment(pid), pid
