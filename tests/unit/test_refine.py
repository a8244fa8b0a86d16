"""Edge refinement on a photo with a known matte: the refined matte is closer to the truth."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from matteserve import stages
from matteserve.pipeline.decode import ImageLimits
from matteserve.pipeline.refine import _box, guided_refine, luma


def known_alpha_scene(size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """A textured subject with a wavy, hair-like outline composited over a textured backdrop."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    c = size / 2
    radius = size * 0.3 + size * 0.025 * np.sin(np.arctan2(yy - c, xx - c) * 40)
    truth = (np.hypot(yy - c, xx - c) < radius).astype(np.float32)
    rng = np.random.default_rng(0)
    fg = np.array([220, 170, 120], np.float32) + rng.normal(0, 6, (size, size, 3))
    bg = np.array([40, 70, 90], np.float32) + rng.normal(0, 6, (size, size, 3))
    photo = truth[..., None] * fg + (1 - truth[..., None]) * bg
    return np.clip(photo, 0, 255).astype(np.uint8), truth


def model_like_matte(truth: np.ndarray) -> np.ndarray:
    """What a 320 px model gives back after upsampling: the right shape, blurred edges."""
    size = truth.shape[::-1]
    small = Image.fromarray((truth * 255).astype(np.uint8)).resize((320, 320), Image.Resampling.BILINEAR)
    return np.asarray(small.resize(size, Image.Resampling.BILINEAR))


def edge_error(matte: np.ndarray, truth: np.ndarray) -> float:
    near_edge = np.abs(_box(truth, 6) - 0.5) < 0.49
    return float(np.abs(matte / 255 - truth)[near_edge].mean())


def test_box_filter_matches_a_brute_force_window_mean() -> None:
    x = np.random.default_rng(1).random((23, 17)).astype(np.float32)
    padded = np.pad(x, 3, mode="reflect")
    brute = np.array([[padded[i : i + 7, j : j + 7].mean() for j in range(17)] for i in range(23)])
    np.testing.assert_allclose(_box(x, 3), brute, atol=1e-5)


def test_refined_matte_is_closer_to_the_known_alpha_at_the_edges() -> None:
    photo, truth = known_alpha_scene()
    coarse = model_like_matte(truth)
    refined = guided_refine(coarse, luma(photo))
    assert refined.shape == coarse.shape
    assert refined.dtype == np.uint8
    assert edge_error(refined, truth) < 0.85 * edge_error(coarse, truth)


def test_flat_regions_are_left_alone() -> None:
    photo, truth = known_alpha_scene()
    refined = guided_refine(model_like_matte(truth), luma(photo))
    inside = _box(truth, 20) == 1.0
    outside = _box(truth, 20) == 0.0
    assert refined[inside].min() > 240
    assert refined[outside].max() < 15


def test_refine_option_runs_through_postprocess_for_every_format() -> None:
    photo, truth = known_alpha_scene(256)
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, "PNG")
    alpha = np.asarray(Image.fromarray((truth * 255).astype(np.uint8)).resize((320, 320)))
    for fmt in ("png", "webp", "jpeg", "mask", "raw"):
        plain = stages.postprocess(buf.getvalue(), f'{{"format": "{fmt}"}}'.encode(), alpha, ImageLimits())
        refined = stages.postprocess(
            buf.getvalue(), f'{{"format": "{fmt}", "refine": true}}'.encode(), alpha, ImageLimits()
        )
        assert (refined.width, refined.height, refined.content_type) == (plain.width, plain.height, plain.content_type)
        assert refined.data != plain.data, fmt
