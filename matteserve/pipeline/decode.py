"""Decoding untrusted image bytes into oriented RGB, safely and no larger than needed."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import simplejpeg
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from matteserve.errors import ImageTooLarge, InvalidImage
from matteserve.pipeline.header import Header, read_header

# Only these decoders ever see caller bytes: Pillow can also open formats (EPS, PSD, ...) whose
# decoders are not meant for untrusted input. (Camera JPEGs that Pillow reports as MPO open through
# the JPEG decoder.)
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")

# EXIF orientations 5-8 rotate by 90 degrees, so the stored width and height swap.
_SWAPS_AXES = {5, 6, 7, 8}

# The limit is checked from the header (matteserve.pipeline.header) before Pillow sees the bytes;
# Pillow's own guards stay on behind it, at the largest limit a deployment may configure, in case
# a decoder finds more pixels than the header declared (it warns above this and refuses at 2x).
MAX_CONFIGURABLE_PIXELS = 500_000_000
Image.MAX_IMAGE_PIXELS = MAX_CONFIGURABLE_PIXELS
# PNG text chunks are decompressed by Pillow: at most 1 MiB each (its default), 8 MiB in all.
PngImagePlugin.MAX_TEXT_MEMORY = 8 * PngImagePlugin.MAX_TEXT_CHUNK
Image.init()  # register every plugin so ALLOWED_FORMATS (WebP, TIFF) are all known


@dataclass(frozen=True)
class ImageLimits:
    """What an input image may be. The defaults admit any real photo and reject bombs and slivers."""

    max_pixels: int = 40_000_000
    min_side: int = 16
    max_aspect: float = 32.0

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or self.min_side < 1 or self.max_aspect < 1:
            raise ValueError("image limits must be positive (max_aspect >= 1)")
        if self.max_pixels > MAX_CONFIGURABLE_PIXELS:
            raise ValueError(f"max_pixels is at most {MAX_CONFIGURABLE_PIXELS}, got {self.max_pixels}")


def open_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """Check the header against ``limits``, then open it with Pillow; pixels are not decoded yet.

    The size comes from :func:`check_header`, which reads header bytes only, so a decompression
    bomb or a chunk flood is refused before Pillow parses anything.
    """
    header = check_header(data, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "truncated EXIF": a bad tag must not abort the image
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise InvalidImage(f"the {header.format} image cannot be read; its header is corrupt") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InvalidImage(f"the image header is corrupt: {e}") from e
    # Sorted: Pillow may report a TIFF already turned by its orientation, which changes no limit.
    if sorted(img.size) != sorted((header.width, header.height)):
        raise InvalidImage(
            f"the {header.format} header declares {header.width}x{header.height} but its frame is "
            f"{img.size[0]}x{img.size[1]}; re-encode the image"
        )
    if header.format == "PNG":
        # Pillow looks for EXIF after the pixels by decoding them all; it was found from the header.
        img.info.setdefault("exif", header.exif or b"")
    return img


def check_header(data: bytes, limits: ImageLimits) -> Header:
    """The header of ``data`` if it is within ``limits``; raises InvalidImage (ImageTooLarge) if not.

    Reads header bytes only, at a bounded cost, and never calls Pillow: safe to run for any bytes.
    """
    if not data:
        raise InvalidImage("the image is empty (0 bytes)")
    header = read_header(data)
    check_size(header.width, header.height, limits)
    return header


def orientation(img: Image.Image) -> int:
    """The EXIF orientation still to be applied to ``img`` once loaded (1: none)."""
    if img.format == "TIFF" and img.size != (img.tag_v2.get(256), img.tag_v2.get(257)):  # type: ignore[attr-defined]
        return 1  # Pillow (11.1+) reports this TIFF's size turned already, and turns its pixels on load
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:  # a malformed EXIF block is ignored, as browsers do
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as the image is meant to be seen, after its EXIF orientation."""
    w, h = img.size
    return (h, w) if orientation(img) in _SWAPS_AXES else (w, h)


def check_size(width: int, height: int, limits: ImageLimits) -> None:
    pixels = width * height
    if pixels > limits.max_pixels:
        raise ImageTooLarge(
            f"the image is {width}x{height} = {pixels / 1e6:.1f} MP, above the {limits.max_pixels / 1e6:.1f} MP limit"
        )
    if min(width, height) < limits.min_side:
        raise InvalidImage(
            f"the image is {width}x{height}; both sides must be at least {limits.min_side} px to find a subject"
        )
    if max(width, height) / min(width, height) > limits.max_aspect:
        raise InvalidImage(
            f"the image is {width}x{height}, an aspect ratio above {limits.max_aspect:g}:1; "
            "crop it into parts before removing the background"
        )


def decode_rgb(img: Image.Image, min_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode to an oriented RGB image.

    With ``min_size`` (width, height) a JPEG is decoded at a reduced DCT scale that is still at least
    that large, which halves decode time when only the model input is needed.
    """
    if min_size is not None and img.format in ("JPEG", "MPO"):
        want_w, want_h = min_size
        if orientation(img) in _SWAPS_AXES:
            want_w, want_h = want_h, want_w
        img.draft("RGB", (want_w, want_h))
    _load_oriented(img)
    return to_rgb(img)


def _load_oriented(img: Image.Image) -> None:
    try:
        img.seek(0)  # first frame of a GIF, TIFF or MPO
        img.load()
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise InvalidImage(f"the image data is truncated or corrupt: {e}") from e
    ImageOps.exif_transpose(img, in_place=True)


def has_alpha(img: Image.Image) -> bool:
    """Whether the image carries its own transparency (an alpha band or a transparent colour)."""
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


# EXIF orientation -> the numpy view that shows the stored pixels upright (as ImageOps.exif_transpose).
_ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def decode_rgba(img: Image.Image, data: bytes) -> np.ndarray:
    """Full-size oriented pixels as a writable HxWx4 uint8 array; channel 3 holds the image's own
    alpha (255 where it has none), ready for the matte to be written into it.

    Colour JPEGs, most of the traffic, decode with libjpeg-turbo straight into RGBA (simplejpeg): no
    RGB -> RGBA conversion and no copy out of Pillow, about a third of the cutout's cost.
    """
    if img.format in ("JPEG", "MPO") and img.mode in ("RGB", "L"):
        try:
            rgba = simplejpeg.decode_jpeg(data, colorspace="RGBA")
        except ValueError as e:
            raise InvalidImage(f"the image data is truncated or corrupt: {e}") from e
        turn = _ORIENT.get(orientation(img))
        return np.ascontiguousarray(turn(rgba)) if turn else rgba
    _load_oriented(img)
    if has_alpha(img):
        return np.array(img.convert("RGBA"))
    return np.array(to_rgb(img).convert("RGBA"))


def decode_with_alpha(img: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """Full-size oriented RGB, and the image's own alpha as an 'L' image where it has one."""
    _load_oriented(img)
    if not has_alpha(img):
        return to_rgb(img), None
    rgba = img if img.mode == "RGBA" else img.convert("RGBA")
    return rgba.convert("RGB"), rgba.getchannel("A")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; 16- and 32-bit greys are scaled, not clipped."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode == "I":
        # Pillow's own I;16 -> L conversion clips at 255; scale the full 16-bit range instead.
        grey = (np.asarray(img).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if img.mode == "F":
        grey = np.asarray(img).clip(0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")


def decode(data: bytes, limits: ImageLimits, min_size: tuple[int, int] | None = None) -> Image.Image:
    """Untrusted bytes -> oriented RGB image, checked against ``limits`` before any pixel is decoded."""
    return decode_rgb(open_image(data, limits), min_size)
