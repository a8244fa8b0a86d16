"""The serving stages as plain functions: what Triton's python models run, without Triton."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from matteserve import stages
from matteserve.errors import InvalidOptions
from matteserve.pipeline.decode import ImageLimits
from matteserve.zoo import get_spec

LIMITS = ImageLimits()


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_preprocess_gives_the_model_input() -> None:
    x = stages.preprocess(png(Image.new("RGB", (200, 100), (10, 200, 30))), b"", get_spec("u2netp"), LIMITS)
    assert (x.shape, x.dtype) == ((3, 320, 320), np.float32)


def test_preprocess_rejects_bad_options_before_the_model_runs() -> None:
    with pytest.raises(InvalidOptions):
        stages.preprocess(png(Image.new("RGB", (64, 64))), b'{"format": "bmp"}', get_spec("u2netp"), LIMITS)


def test_transparent_input_stays_transparent_in_every_output() -> None:
    img = Image.new("RGBA", (100, 80), (200, 100, 50, 255))
    img.paste((0, 0, 0, 0), (0, 0, 50, 80))  # left half already cut out
    alpha = np.full((320, 320), 255, np.uint8)  # the model calls everything foreground
    raw = stages.postprocess(png(img), b'{"format": "raw"}', alpha, LIMITS)
    matte = np.frombuffer(raw.data, np.uint8).reshape(80, 100)
    assert matte[:, :45].max() == 0
    assert matte[:, 55:].min() == 255
    cutout = stages.postprocess(png(img), b'{"format": "png"}', alpha, LIMITS)
    assert np.asarray(Image.open(io.BytesIO(cutout.data)))[40, 10, 3] == 0


def test_postprocess_takes_the_gpu_engines_float_alpha_as_the_cpu_models_uint8() -> None:
    data = png(Image.new("RGB", (64, 48), (1, 2, 3)))
    as_float = np.linspace(0, 1, 320 * 320, dtype=np.float32).reshape(320, 320)
    as_uint8 = np.rint(as_float * 255).astype(np.uint8)
    raw = b'{"format": "raw"}'
    assert stages.postprocess(data, raw, as_float, LIMITS) == stages.postprocess(data, raw, as_uint8, LIMITS)
