"""The serving stages as plain functions: what Triton's python models run, without Triton."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from matteserve import stages
from matteserve.errors import InvalidOptions
from matteserve.options import OutputFormat, RequestOptions
from matteserve.pipeline import refine, tensor
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


def photo_and_alpha() -> tuple[bytes, np.ndarray, Image.Image]:
    """A real photo as a JPEG with an EXIF rotation, and a soft elliptical model matte."""
    import skimage.data

    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).save(buf, "JPEG", quality=90, exif=exif.tobytes())
    yy, xx = np.mgrid[-1:1:320j, -1:1:320j]
    alpha = np.clip((1.2 - np.hypot(xx, yy * 1.3)) * 600, 0, 255).astype(np.uint8)
    reference = Image.open(io.BytesIO(buf.getvalue()))
    reference.load()
    return buf.getvalue(), alpha, ImageOps.exif_transpose(reference).convert("RGB")


def test_png_cutout_equals_the_pillow_reference_except_colour_under_clear_pixels() -> None:
    data, alpha, rgb = photo_and_alpha()
    result = stages.postprocess(data, b'{"format": "png"}', alpha, LIMITS)
    served = np.asarray(Image.open(io.BytesIO(result.data)))
    matte = np.asarray(Image.fromarray(alpha, "L").resize(rgb.size, Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(served[:, :, 3], matte)
    visible = matte > 0
    assert 0.2 < visible.mean() < 0.95
    np.testing.assert_array_equal(served[visible, :3], np.asarray(rgb)[visible])
    assert (served[~visible] == 0).all()


def test_jpeg_composite_is_byte_identical_to_pillows_decode_composite_encode() -> None:
    data, alpha, rgb = photo_and_alpha()
    options = RequestOptions(OutputFormat.JPEG, background=(10, 20, 200), quality=85)
    matte = Image.fromarray(alpha, "L").resize(rgb.size, Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    Image.composite(rgb, Image.new("RGB", rgb.size, (10, 20, 200)), matte).save(buf, "JPEG", quality=85)
    assert stages.postprocess(data, options.to_json(), alpha, LIMITS).data == buf.getvalue()


def test_mask_png_holds_exactly_the_upsampled_matte() -> None:
    data, alpha, rgb = photo_and_alpha()
    served = Image.open(io.BytesIO(stages.postprocess(data, b'{"format": "mask"}', alpha, LIMITS).data))
    matte = Image.fromarray(alpha, "L").resize(rgb.size, Image.Resampling.BILINEAR)
    assert served.mode == "L"
    np.testing.assert_array_equal(np.asarray(served), np.asarray(matte))


def test_model_input_is_the_same_as_pillows_reduced_decode_and_lanczos() -> None:
    data, _, _ = photo_and_alpha()
    spec = get_spec("u2netp")
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (480, 480))
    img.load()
    upright = ImageOps.exif_transpose(img).convert("RGB").resize((320, 320), Image.Resampling.LANCZOS)
    expected = tensor.normalise(np.asarray(upright), spec)
    np.testing.assert_array_equal(stages.preprocess(data, b"", spec, LIMITS), expected)


def test_refined_mask_is_the_same_as_refining_with_pillows_decode() -> None:
    data, alpha, rgb = photo_and_alpha()
    served = stages.postprocess(data, b'{"format": "mask", "refine": true}', alpha, LIMITS)
    matte = np.asarray(Image.fromarray(alpha, "L").resize(rgb.size, Image.Resampling.BILINEAR))
    expected = refine.guided_refine(matte, refine.luma(np.asarray(rgb)))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(served.data))), expected)
