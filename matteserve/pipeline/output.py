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


def needs_pixels(fmt: OutputFormat) -> bool:
    """Whether the output uses the original's pixels (otherwise only its size)."""
    return fmt in (OutputFormat.PNG, OutputFormat.WEBP, OutputFormat.JPEG)


def encode(mask: Image.Image, rgb: Image.Image | None, options: RequestOptions) -> bytes:
    """Encode the result; ``rgb`` (the oriented original) is needed when :func:`needs_pixels`."""
    fmt = options.format
    if fmt is OutputFormat.RAW:
        return mask.tobytes()
    if fmt is OutputFormat.MASK:
        buf = io.BytesIO()
        mask.save(buf, "PNG", compress_level=1)
        return buf.getvalue()
    if rgb is None:
        raise ValueError(f"format {fmt.value} needs the original pixels")
    if fmt is OutputFormat.JPEG:
        background = Image.new("RGB", rgb.size, options.background)
        buf = io.BytesIO()
        Image.composite(rgb, background, mask).save(buf, "JPEG", quality=options.quality)
        return buf.getvalue()
    # Straight alpha: the colour channels stay as they were, the matte goes into A.
    rgba = rgb.copy() if rgb.readonly else rgb
    rgba.putalpha(mask)
    if fmt is OutputFormat.PNG:
        return fpng.from_pil(rgba)
    buf = io.BytesIO()
    rgba.save(buf, "WEBP", quality=options.quality, method=0)
    return buf.getvalue()
