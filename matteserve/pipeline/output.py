"""From an alpha matte and the original image to the bytes the caller asked for."""

from __future__ import annotations

import io

import fpng
import numpy as np
from PIL import Image

from matteserve.options import OutputFormat, RequestOptions


def upsample_alpha(alpha: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """Model-sized HxW uint8 alpha -> an 'L' image of the original (width, height), bilinear."""
    mask = Image.fromarray(alpha, "L")
    if mask.size != size:
        mask = mask.resize(size, Image.Resampling.BILINEAR)
    return mask


def encode_cutout(rgba: np.ndarray, options: RequestOptions) -> bytes:
    """HxWx4 uint8 with the final matte in channel 3 -> a PNG (fpng, straight alpha) or a WebP."""
    if options.format is OutputFormat.PNG:
        return fpng.from_ndarray(rgba)
    if options.format is OutputFormat.WEBP:
        buf = io.BytesIO()
        Image.fromarray(rgba, "RGBA").save(buf, "WEBP", quality=options.quality, method=0)
        return buf.getvalue()
    raise ValueError(f"{options.format.value} is not a cutout format")


def encode_matte(mask: Image.Image, options: RequestOptions) -> bytes:
    """The matte alone: a grayscale PNG, or raw height*width bytes."""
    if options.format is OutputFormat.RAW:
        return mask.tobytes()
    if options.format is OutputFormat.MASK:
        buf = io.BytesIO()
        mask.save(buf, "PNG", compress_level=1)
        return buf.getvalue()
    raise ValueError(f"{options.format.value} is not a matte format")


def encode_composite(mask: Image.Image, rgb: Image.Image, options: RequestOptions) -> bytes:
    """The subject over ``options.background`` as a JPEG."""
    background = Image.new("RGB", rgb.size, options.background)
    buf = io.BytesIO()
    Image.composite(rgb, background, mask).save(buf, "JPEG", quality=options.quality)
    return buf.getvalue()
