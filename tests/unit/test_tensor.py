"""Model input and output maths, checked against rembg's formulation of each model's preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from matteserve.pipeline.tensor import finalise_alpha, normalise, resize_for_model, select_output
from matteserve.zoo import ZOO, Activation, ModelSpec, OutputNorm, Scaling, ShortSideMultiple


def rembg_normalise(pixels: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """The reference written the way rembg writes it: float64, divide, subtract, divide, transpose."""
    arr = pixels / (np.max(pixels) if spec.scaling is Scaling.IMAGE_MAX else 255.0)
    out = np.zeros(arr.shape)
    for c in range(3):
        out[:, :, c] = (arr[:, :, c] - spec.mean[c]) / spec.std[c]
    return out.transpose((2, 0, 1))


@pytest.mark.parametrize("name", sorted(ZOO))
def test_normalise_matches_the_reference_formula_for_every_zoo_model(name: str) -> None:
    spec = ZOO[name]
    pixels = np.random.default_rng(1).integers(0, 230, size=(40, 30, 3), dtype=np.uint8)
    ours = normalise(pixels, spec)
    assert ours.dtype == np.float32
    assert ours.shape == (3, 40, 30)
    np.testing.assert_allclose(ours, rembg_normalise(pixels, spec), atol=2e-6)


def test_image_max_scaling_divides_by_the_brightest_pixel() -> None:
    spec = ZOO["u2netp"]
    pixels = np.full((4, 4, 3), 100, dtype=np.uint8)
    # 100 / max(100) = 1.0 for every pixel: (1 - mean) / std.
    expected = [(1 - m) / s for m, s in zip(spec.mean, spec.std, strict=True)]
    np.testing.assert_allclose(normalise(pixels, spec)[:, 0, 0], expected, rtol=1e-6)


def test_an_all_black_image_does_not_divide_by_zero() -> None:
    assert np.isfinite(normalise(np.zeros((8, 8, 3), dtype=np.uint8), ZOO["u2netp"])).all()


def test_unit_scaling_for_modnet() -> None:
    spec = ZOO["modnet"]
    pixels = np.array([[[0, 255, 127]]], dtype=np.uint8)
    # MODNet: (x - 127.5) / 127.5
    np.testing.assert_allclose(normalise(pixels, spec)[:, 0, 0], [-1.0, 1.0, (127 - 127.5) / 127.5], atol=1e-6)


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("u2netp", (320, 320)),
        ("u2net", (320, 320)),
        ("isnet-general-use", (1024, 1024)),
        ("birefnet-general", (1024, 1024)),
        ("rmbg-1.4", (1024, 1024)),
    ],
)
def test_fixed_size_models_resize_to_their_input(name: str, size: tuple[int, int]) -> None:
    img = Image.new("RGB", (500, 300))
    assert resize_for_model(img, ZOO[name], img.size).shape == (size[1], size[0], 3)


def test_lanczos_resize_matches_pillow_reference() -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, size=(480, 640, 3), dtype=np.uint8))
    expected = np.asarray(img.resize((320, 320), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(resize_for_model(img, ZOO["u2netp"], img.size), expected)


def test_modnet_short_side_rule() -> None:
    rule = ShortSideMultiple(512, 32)
    assert rule.for_image(1920, 1080) == (896, 512)  # 1920 * 512/1080 = 910 -> 896
    assert rule.for_image(1080, 1920) == (512, 896)
    assert rule.for_image(512, 512) == (512, 512)


def test_min_max_stretches_each_prediction_to_full_range() -> None:
    pred = np.array([[0.2, 0.4], [0.6, 0.8]], dtype=np.float32)
    alpha = finalise_alpha(pred, ZOO["u2netp"])
    assert alpha.dtype == np.uint8
    np.testing.assert_array_equal(alpha, [[0, 85], [170, 255]])


def test_constant_prediction_gives_zero_alpha_not_nan() -> None:
    np.testing.assert_array_equal(finalise_alpha(np.full((3, 3), 0.5, np.float32), ZOO["u2netp"]), 0)


def test_sigmoid_then_min_max_for_birefnet() -> None:
    spec = ZOO["birefnet-general"]
    assert spec.activation is Activation.SIGMOID
    logits = np.array([[-4.0, 0.0, 4.0]], dtype=np.float32)
    sig = 1 / (1 + np.exp(-logits))
    expected = np.rint((sig - sig.min()) / (sig.max() - sig.min()) * 255)
    np.testing.assert_array_equal(finalise_alpha(logits, spec), expected)


def test_clip_output_for_modnet() -> None:
    spec = ZOO["modnet"]
    assert spec.output_norm is OutputNorm.CLIP
    np.testing.assert_array_equal(finalise_alpha(np.array([[-0.5, 0.5, 1.5]], np.float32), spec), [[0, 128, 255]])


def test_select_output_takes_channel_zero_of_the_spec_output() -> None:
    spec = ZOO["u2netp"]
    first = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    out = select_output([first, np.zeros(1)], spec)
    np.testing.assert_array_equal(out, first[:, 0])
    with pytest.raises(ValueError, match="expected NxCxHxW"):
        select_output([np.zeros((2, 2))], spec)
