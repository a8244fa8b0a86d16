"""Inputs for a load test: a folder of files, or photo-like JPEGs generated at chosen sizes.

Generated inputs are real photographs (the ones scikit-image ships), centre-cropped to a square and
resized with bicubic filtering, then saved as JPEG quality 90: they decode and compress like camera
photos, which synthetic noise or flat colours would not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from matteserve.build.photos import PHOTOS, jpeg
from matteserve.errors import MatteserveError

logger = logging.getLogger(__name__)

JPEG_QUALITY = 90


@dataclass(frozen=True)
class InputImage:
    name: str
    data: bytes


def photo_jpeg(photo: str, size: int, quality: int = JPEG_QUALITY) -> bytes:
    """One scikit-image photograph as a ``size`` x ``size`` JPEG."""
    try:
        import skimage.data
    except ImportError as e:
        raise MatteserveError(
            "generated inputs are resized scikit-image photos: pip install 'matteserve[loadtest]', "
            "or pass a folder of images with --images"
        ) from e
    import numpy as np
    from PIL import Image

    return jpeg(np.asarray(Image.fromarray(getattr(skimage.data, photo)()).convert("RGB")), size, quality)


def generated(size: int, count: int = len(PHOTOS)) -> list[InputImage]:
    """``count`` distinct photos at ``size`` px (cycling through the photos)."""
    if size < 16:
        raise MatteserveError(f"image size must be at least 16 px, got {size}")
    return [
        InputImage(f"{PHOTOS[i % len(PHOTOS)]}-{size}", photo_jpeg(PHOTOS[i % len(PHOTOS)], size)) for i in range(count)
    ]


def from_folder(folder: Path, limit: int = 256) -> list[InputImage]:
    """Every regular file in ``folder`` (sorted, at most ``limit``), whatever it holds: files that are
    not valid images make requests that fail, which is how a test mixes in bad inputs."""
    if not folder.is_dir():
        raise MatteserveError(f"--images {folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))[:limit]
    if not files:
        raise MatteserveError(f"--images {folder}: the folder has no files")
    return [InputImage(p.name, p.read_bytes()) for p in files]
