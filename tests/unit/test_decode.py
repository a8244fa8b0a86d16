"""Decoding untrusted bytes: formats, modes, EXIF orientation, reduced JPEG decode and limits."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from matteserve.errors import ImageTooLarge, InvalidImage
from matteserve.loadtest.hostile import png_declaring
from matteserve.pipeline.decode import (
    ImageLimits,
    decode,
    decode_rgba,
    decode_with_alpha,
    open_image,
    oriented_size,
)

LIMITS = ImageLimits()


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(width: int = 64, height: int = 48) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None].repeat(width, 1)
    return Image.fromarray(np.dstack([x, y, 255 - x]), "RGB")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_every_supported_format_decodes_to_rgb_at_its_size(fmt: str) -> None:
    out = decode(encode(gradient(), fmt), LIMITS)
    assert out.mode == "RGB"
    assert out.size == (64, 48)


def test_gif_decodes_its_first_frame() -> None:
    red, blue = Image.new("RGB", (32, 32), (255, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 255))
    data = encode(red, "GIF", save_all=True, append_images=[blue])
    pixel = np.asarray(decode(data, LIMITS))[16, 16]
    assert pixel[0] > 200
    assert pixel[2] < 50


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("L", "PNG"), ("LA", "PNG"), ("RGBA", "PNG"), ("CMYK", "JPEG"), ("P", "PNG"), ("1", "PNG"), ("CMYK", "TIFF")],
)
def test_every_mode_becomes_rgb(mode: str, fmt: str) -> None:
    out = decode(encode(gradient().convert(mode), fmt), LIMITS)
    assert out.mode == "RGB"
    assert out.size == (64, 48)


def test_palette_with_transparency_becomes_rgb() -> None:
    img = gradient().convert("P")
    data = encode(img, "PNG", transparency=0)
    assert decode(data, LIMITS).mode == "RGB"


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    values = np.full((32, 32), 32768, dtype=np.uint16)  # mid grey in 16 bits
    data = encode(Image.fromarray(values), "PNG")
    grey = np.asarray(decode(data, LIMITS))
    assert grey.shape == (32, 32, 3)
    assert 126 <= int(grey[0, 0, 0]) <= 129  # clipping would give 255


def with_orientation(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", exif=exif.tobytes(), quality=95)


@pytest.mark.parametrize("orientation", [6, 8, 5, 7])
def test_exif_rotations_swap_the_sides(orientation: int) -> None:
    data = with_orientation(gradient(64, 48), orientation)
    assert oriented_size(open_image(data, LIMITS)) == (48, 64)
    assert decode(data, LIMITS).size == (48, 64)


def test_exif_orientation_six_rotates_clockwise() -> None:
    img = Image.new("RGB", (64, 48), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 16, 48))  # white band on the left edge as stored
    out = np.asarray(decode(with_orientation(img, 6), LIMITS).convert("L"))
    # Orientation 6 means "rotate 90 degrees clockwise to view": the left band ends up on top.
    assert out[:8].mean() > 200
    assert out[-8:].mean() < 50


def test_reduced_jpeg_decode_stays_at_least_the_requested_size() -> None:
    data = encode(gradient(2000, 1500), "JPEG")
    out = decode(data, LIMITS, min_size=(640, 640))
    assert out.size[0] < 2000
    assert min(out.size) >= 640


def test_reduced_decode_accounts_for_orientation() -> None:
    data = with_orientation(gradient(2000, 1000), 6)
    out = decode(data, LIMITS, min_size=(640, 1280))
    assert out.size[0] >= 640
    assert out.size[1] >= 1280


def test_png_is_never_reduced() -> None:
    assert decode(encode(gradient(800, 600), "PNG"), LIMITS, min_size=(100, 100)).size == (800, 600)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (bytes(range(256)) * 8, "not a supported image"),
        (b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>", "not a supported image"),
        (b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "not a supported image"),
    ],
)
def test_non_images_are_rejected_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(InvalidImage, match=message):
        decode(data, LIMITS)


def test_truncated_jpeg_is_rejected() -> None:
    data = encode(gradient(400, 300), "JPEG")
    with pytest.raises(InvalidImage, match="truncated or corrupt"):
        decode(data[: len(data) // 2], LIMITS)


def test_decompression_bomb_is_rejected_before_decoding() -> None:
    with pytest.raises(ImageTooLarge, match=r"50000x50000 = 2500\.0 MP, above the 40\.0 MP limit"):
        decode(png_declaring(50000, 50000), LIMITS)


def test_pixel_limit_is_configurable() -> None:
    data = encode(gradient(200, 100), "PNG")
    with pytest.raises(ImageTooLarge):
        decode(data, ImageLimits(max_pixels=10_000))
    assert decode(data, ImageLimits(max_pixels=20_000)).size == (200, 100)


def test_tiny_image_is_rejected() -> None:
    with pytest.raises(InvalidImage, match="at least 16 px"):
        decode(encode(Image.new("RGB", (1, 1)), "PNG"), LIMITS)


def test_sliver_is_rejected() -> None:
    with pytest.raises(InvalidImage, match="aspect ratio"):
        decode(png_declaring(20000, 50), LIMITS)


def test_own_transparency_is_returned_with_the_pixels() -> None:
    img = gradient().convert("RGBA")
    img.putalpha(Image.new("L", img.size, 0).point(lambda _: 77))
    rgb, alpha = decode_with_alpha(open_image(encode(img, "PNG"), LIMITS))
    assert rgb.mode == "RGB"
    assert alpha is not None
    assert np.asarray(alpha).min() == 77 == np.asarray(alpha).max()


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_opaque_images_have_no_alpha(mode: str) -> None:
    data = encode(gradient().convert(mode), "TIFF")
    assert decode_with_alpha(open_image(data, LIMITS))[1] is None


@pytest.mark.parametrize("orientation", range(1, 9))
def test_rgba_decode_orients_exactly_like_pillow(orientation: int) -> None:
    data = with_orientation(gradient(64, 48), orientation)
    expected = np.asarray(decode(data, LIMITS))
    rgba = decode_rgba(open_image(data, LIMITS), data)
    assert rgba.flags.writeable
    assert rgba.flags.c_contiguous
    # libjpeg-turbo straight to RGBA versus Pillow's libjpeg-turbo to RGB: the same decoder.
    assert np.abs(rgba[:, :, :3].astype(int) - expected).max() <= 2
    assert (rgba[:, :, 3] == 255).all()


@pytest.mark.parametrize(("mode", "fmt"), [("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "PNG"), ("P", "GIF")])
def test_rgba_decode_of_other_jpegs_and_formats(mode: str, fmt: str) -> None:
    data = encode(gradient().convert(mode), fmt)
    expected = np.asarray(decode(data, LIMITS)).astype(int)
    rgba = decode_rgba(open_image(data, LIMITS), data)
    assert rgba.shape == (48, 64, 4)
    assert np.abs(rgba[:, :, :3].astype(int) - expected).max() <= 2


def test_rgba_decode_keeps_the_images_own_alpha() -> None:
    img = gradient().convert("RGBA")
    img.putalpha(40)
    data = encode(img, "PNG")
    assert (decode_rgba(open_image(data, LIMITS), data)[:, :, 3] == 40).all()
