"""The two photo sets the GPU build checks FP16 on: one to choose the FP32 islands, another to gate.

Choosing the islands and gating on the same photos would pass whatever the islands were fitted to.
The gate set adds what product catalogues send and the calibration photos lack: flat white, grey
and dark backgrounds behind a sharp-edged object. No data set with product shots and true mattes is
reachable here, so they are composited from scikit-image's RGBA logo and its horse silhouette
(filled with a real texture) over flat backgrounds, which makes their true alpha known.

This module imports only numpy, Pillow and scikit-image, so an image build can run it on its own
(``python3 build/gpu/photos.py DIR``) and bake the photos in: the GPU build then needs neither
scikit-image nor a network.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

CALIBRATION = "calibration"
GATE = "gate"
SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
CANVAS = (480, 640)  # height, width of the composited product shots

WHITE, GREY, DARK = (255, 255, 255), (128, 128, 128), (16, 16, 18)


def _on_background(rgb: np.ndarray, alpha: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """``rgb`` (hxwx3) with ``alpha`` (hxw, 0..1) centred on a flat ``CANVAS`` of ``background``."""
    height, width = CANVAS
    canvas = np.empty((height, width, 3), np.float32)
    canvas[:] = background
    h, w = alpha.shape
    top, left = (height - h) // 2, (width - w) // 2
    region = canvas[top : top + h, left : left + w]
    region[:] = alpha[..., None] * rgb + (1 - alpha[..., None]) * region
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def _logo() -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's logo, a disc: its file is opaque white around the disc, so the alpha is the
    disc itself (radius where the non-white pixels end), anti-aliased over one pixel."""
    import skimage.data

    rgb = skimage.data.logo()[::2, ::2, :3].astype(np.float32)  # 250x250
    h, w = rgb.shape[:2]
    y, x = np.mgrid[:h, :w]
    distance = np.hypot(y - (h - 1) / 2, x - (w - 1) / 2)
    radius = float(distance[rgb.min(axis=2) < 200].max())
    return rgb, np.clip(radius - distance + 0.5, 0.0, 1.0)


def _horse(texture: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The horse silhouette (a hard-edged object) filled with a real photo's texture."""
    import skimage.data

    alpha = (~skimage.data.horse()).astype(np.float32)  # True is background in the file
    h, w = alpha.shape
    return texture[:h, :w].astype(np.float32), alpha


def calibration() -> dict[str, np.ndarray]:
    """scikit-image's colour photos of people, animals and objects in scenes."""
    import skimage.data

    return {name: getattr(skimage.data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")}


def gate() -> dict[str, np.ndarray]:
    """A photo not in :func:`calibration` and composited product shots on flat backgrounds."""
    import skimage.data

    logo_rgb, logo_alpha = _logo()
    coffee, brick = skimage.data.coffee(), np.repeat(skimage.data.brick()[..., None], 3, axis=2)
    horse_brown, horse_alpha = _horse(coffee[30:, 100:])
    horse_grey, _ = _horse(brick)
    return {
        "motorcycle": skimage.data.stereo_motorcycle()[0],
        "logo-white": _on_background(logo_rgb, logo_alpha, WHITE),
        "logo-grey": _on_background(logo_rgb, logo_alpha, GREY),
        "logo-dark": _on_background(logo_rgb, logo_alpha, DARK),
        "horse-white": _on_background(horse_brown, horse_alpha, WHITE),
        "horse-dark": _on_background(horse_grey, horse_alpha, DARK),
    }


def write(folder: Path) -> None:
    """Both sets as PNG files in ``folder/calibration`` and ``folder/gate``."""
    from PIL import Image

    for name, photos in ((CALIBRATION, calibration()), (GATE, gate())):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for photo, pixels in photos.items():
            Image.fromarray(pixels).save(folder / name / f"{photo}.png")


def read(folder: Path) -> dict[str, np.ndarray]:
    """Every photo in ``folder`` as RGB uint8, by file stem; empty when there are none."""
    from PIL import Image

    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES) if folder.is_dir() else []
    return {p.stem: np.asarray(Image.open(p).convert("RGB")) for p in paths}


if __name__ == "__main__":
    write(Path(sys.argv[1]))
