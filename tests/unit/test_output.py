"""Upsampling the alpha and every output format: each decodes back to the right size and mode."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from matteserve.errors import InvalidOptions
from matteserve.options import OutputFormat, RequestOptions, parse_colour
from matteserve.pipeline.output import encode_composite, encode_cutout, encode_matte, put_matte, upsample_alpha

SIZE = (200, 120)


def scene() -> tuple[Image.Image, Image.Image]:
    rgb = Image.new("RGB", SIZE, (200, 30, 30))
    alpha = np.zeros((64, 64), dtype=np.uint8)
    alpha[:, 32:] = 255  # right half is foreground
    return rgb, Image.fromarray(upsample_alpha(alpha, SIZE), "L")


def rgba_of(rgb: Image.Image, mask: Image.Image) -> np.ndarray:
    return np.dstack([np.asarray(rgb), np.asarray(mask)])


def test_upsample_alpha_to_the_original_size() -> None:
    mask = upsample_alpha(np.full((320, 320), 7, np.uint8), (1024, 683))
    assert mask.shape == (683, 1024)
    assert mask.dtype == np.uint8
    assert mask.min() == 7 == mask.max()


@pytest.mark.parametrize("size", [(1024, 1024), (2048, 1365), (320, 333), (200, 120), (100, 900)])
def test_upsampled_alpha_is_pillows_bilinear_to_within_rounding(size: tuple[int, int]) -> None:
    """Enlarging runs OpenCV's resize, shrinking (a side below the model's) Pillow's; both give the
    bilinear filter the served matte is defined by."""
    rng = np.random.default_rng(1)
    alpha = np.zeros((320, 320), np.uint8)
    alpha[80:240, 60:260] = 255
    alpha[::7] = rng.integers(0, 256, (46, 320), dtype=np.uint8)  # edges and soft values everywhere
    pillow = np.asarray(Image.fromarray(alpha, "L").resize(size, Image.Resampling.BILINEAR)).astype(int)
    ours = upsample_alpha(alpha, size)
    assert ours.shape == (size[1], size[0])
    assert np.abs(ours - pillow).max() <= 1
    assert np.mean(ours != pillow) < 0.05


def test_png_cutout_is_rgba_with_straight_alpha() -> None:
    rgb, mask = scene()
    out = Image.open(io.BytesIO(encode_cutout(rgba_of(rgb, mask), RequestOptions(OutputFormat.PNG))))
    assert out.format == "PNG"
    assert out.mode == "RGBA"
    assert out.size == SIZE
    arr = np.asarray(out)
    assert arr[60, 10, 3] == 0
    assert arr[60, 190, 3] == 255
    partly = np.flatnonzero((arr[60, :, 3] > 0) & (arr[60, :, 3] < 255))
    assert partly.size > 0
    # Colour is kept at full strength where partly transparent (straight, not premultiplied).
    assert (arr[60, partly, :3] == (200, 30, 30)).all()


def test_clearing_keeps_the_matte_and_every_visible_colour_and_zeroes_only_invisible_ones() -> None:
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (50, 70, 4), dtype=np.uint8)
    matte = rng.integers(0, 4, (50, 70), dtype=np.uint8) * 85  # 0, 85, 170, 255
    kept, cleared = rgba.copy(), rgba.copy()
    put_matte(kept, matte, clear=False)
    put_matte(cleared, matte, clear=True)
    np.testing.assert_array_equal(cleared[:, :, 3], matte)
    np.testing.assert_array_equal(kept[:, :, 3], matte)
    visible = matte > 0
    np.testing.assert_array_equal(cleared[visible], kept[visible])
    np.testing.assert_array_equal(kept[visible, :3], rgba[visible, :3])
    assert (cleared[~visible] == 0).all()


def test_cleared_png_composites_exactly_like_the_uncleared_one_over_any_background() -> None:
    """What makes the smaller PNG equivalent: over any background every output pixel is the same."""
    rgb, mask = scene()
    kept, cleared = rgba_of(rgb, mask), rgba_of(rgb, mask)
    put_matte(cleared, np.asarray(mask), clear=True)
    options = RequestOptions(OutputFormat.PNG)
    a = Image.open(io.BytesIO(encode_cutout(kept, options)))
    b = Image.open(io.BytesIO(encode_cutout(cleared, options)))
    for colour in ((0, 0, 0, 255), (255, 255, 255, 255), (12, 200, 99, 255)):
        background = Image.new("RGBA", SIZE, colour)
        assert Image.alpha_composite(background, a).tobytes() == Image.alpha_composite(background, b).tobytes()


def test_mask_is_a_grayscale_png() -> None:
    _, mask = scene()
    out = Image.open(io.BytesIO(encode_matte(mask, RequestOptions(OutputFormat.MASK))))
    assert (out.format, out.mode, out.size) == ("PNG", "L", SIZE)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(mask))


def test_webp_keeps_the_alpha() -> None:
    rgb, mask = scene()
    out = Image.open(io.BytesIO(encode_cutout(rgba_of(rgb, mask), RequestOptions(OutputFormat.WEBP, quality=80))))
    assert (out.format, out.mode, out.size) == ("WEBP", "RGBA", SIZE)
    alpha = np.asarray(out)[:, :, 3]
    assert alpha[60, 10] < 10
    assert alpha[60, 190] > 245


def test_jpeg_is_composited_over_the_background_colour() -> None:
    rgb, mask = scene()
    data = encode_composite(mask, rgb, RequestOptions(OutputFormat.JPEG, background=(0, 0, 255)))
    out = Image.open(io.BytesIO(data))
    assert (out.format, out.mode, out.size) == ("JPEG", "RGB", SIZE)
    arr = np.asarray(out).astype(int)
    assert np.abs(arr[60, 10] - [0, 0, 255]).max() < 12  # background shows where alpha is 0
    assert np.abs(arr[60, 190] - [200, 30, 30]).max() < 12  # subject where alpha is 255


def test_raw_is_height_times_width_alpha_bytes() -> None:
    _, mask = scene()
    raw = encode_matte(mask, RequestOptions(OutputFormat.RAW))
    assert len(raw) == SIZE[0] * SIZE[1]
    np.testing.assert_array_equal(np.frombuffer(raw, np.uint8).reshape(SIZE[1], SIZE[0]), np.asarray(mask))


def test_each_encoder_refuses_the_other_formats() -> None:
    rgb, mask = scene()
    with pytest.raises(ValueError, match="not a cutout format"):
        encode_cutout(rgba_of(rgb, mask), RequestOptions(OutputFormat.MASK))
    with pytest.raises(ValueError, match="not a matte format"):
        encode_matte(mask, RequestOptions(OutputFormat.PNG))


def test_options_round_trip_through_json() -> None:
    opts = RequestOptions(OutputFormat.JPEG, background=(1, 2, 3), quality=70)
    assert RequestOptions.from_json(opts.to_json()) == opts
    assert RequestOptions.from_json(b"") == RequestOptions()
    assert RequestOptions.from_json(b"{}") == RequestOptions()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"format": "gif"}', "unknown format 'gif'"),
        (b'{"colour": "red"}', "unknown option"),
        (b'{"quality": 0}', "quality must be 1-100"),
        (b'{"quality": "high"}', "quality must be an integer"),
        (b'{"background": "red"}', "background must be"),
        (b"not json", "must be a JSON object"),
        (b"[1, 2]", "must be a JSON object"),
    ],
)
def test_bad_options_say_what_was_wrong(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidOptions, match=message):
        RequestOptions.from_json(raw)


def test_colours_in_hex_or_decimal() -> None:
    assert parse_colour("#ff8000") == (255, 128, 0)
    assert parse_colour("10,20,30") == (10, 20, 30)
    with pytest.raises(InvalidOptions):
        parse_colour("300,0,0")


def test_without_opencv_the_matte_is_enlarged_by_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    from matteserve.pipeline import output

    alpha = np.random.default_rng(2).integers(0, 256, (320, 320), dtype=np.uint8)
    monkeypatch.setattr(output, "cv2", None)
    pillow = np.asarray(Image.fromarray(alpha, "L").resize((1024, 768), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(upsample_alpha(alpha, (1024, 768)), pillow)
