"""The held-out photos every parity gate of the build is measured on, in three sets, all from
scikit-image's photographs and composites of cut-outs over flat backgrounds with known alphas, so
none needs a download:

- :func:`gate_photos` judges a faster CPU runtime or precision against the FP32 reference: the
  :data:`PHOTOS` (a portrait with hair on a studio backdrop, a cat's fur, a product on a table, a
  rocket against the sky) and composites over the backgrounds product photography uses: pure white,
  a flat colour and near black (scikit-image's round logo, its horse silhouette, a feathered oval
  around the cat's head). The build never tunes on these photos.
- :func:`calibration` (the :data:`PHOTOS`) chooses the GPU engine's FP32 islands and :func:`gate`
  decides whether FP16 is served. Choosing the islands and gating on the same photos would pass
  whatever the islands were fitted to, so the gate set is a photo not in the calibration set and
  what product catalogues send: a sharp-edged object (the logo, the horse filled with a real
  texture) on flat white, grey and dark backgrounds.

This module imports only numpy, Pillow and scikit-image, so an image build runs it on its own
(``python3 build/photos.py DIR``) and bakes the GPU sets in: the GPU build then needs neither
scikit-image nor a network.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
CALIBRATION = "calibration"
GATE = "gate"
SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
CANVAS = (480, 640)  # height, width of the composited product shots of the GPU gate

WHITE, GREY, FLAT, DARK = (255, 255, 255), (128, 128, 128), (96, 140, 196), (18, 18, 22)
GATE_DARK = (16, 16, 18)  # the GPU gate's, as its published figures were measured


def _skimage_data() -> ModuleType:
    try:
        import skimage.data
    except ImportError:
        from matteserve.errors import ModelError

        raise ModelError(
            "the build's parity gates run on scikit-image's photos: pip install 'matteserve[loadtest]'"
        ) from None
    return skimage.data


def composite(foreground: np.ndarray, alpha: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """``foreground`` (HxWx3) over a flat ``background`` through ``alpha`` (HxW float in [0, 1])."""
    a = alpha[:, :, None].astype(np.float32)
    out = foreground.astype(np.float32) * a + np.asarray(background, np.float32) * (1.0 - a)
    return np.rint(out).astype(np.uint8)


def _feathered_oval(width: int, height: int, box: tuple[int, int, int, int], blur: float) -> np.ndarray:
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    return np.asarray(mask.filter(ImageFilter.GaussianBlur(blur)), np.float32) / 255.0


def gate_photos() -> dict[str, np.ndarray]:
    """Name -> HxWx3 uint8 RGB, at each photo's own size (the gates compare at the model's size)."""
    data = _skimage_data()
    out = calibration()
    logo = data.logo()[:, :, :3]  # opaque everywhere: the disc is cut out here
    disc = _feathered_oval(logo.shape[1], logo.shape[0], (12, 12, 488, 488), blur=1)
    out["logo-on-white"] = composite(logo, disc, WHITE)
    out["logo-on-dark"] = composite(logo, disc, DARK)
    cat = out["chelsea"]
    height, width = cat.shape[:2]
    fur = _feathered_oval(width, height, (60, 10, 330, 290), blur=6)
    out["cat-on-flat"] = composite(cat, fur, FLAT)
    out["cat-on-dark"] = composite(cat, fur, DARK)
    silhouette = Image.fromarray(np.where(data.horse(), 0, 255).astype(np.uint8))  # True is the backdrop
    horse_alpha = np.asarray(silhouette.filter(ImageFilter.GaussianBlur(1)), np.float32) / 255.0
    texture = np.asarray(Image.fromarray(out["coffee"]).resize((horse_alpha.shape[1], horse_alpha.shape[0])))
    out["product-on-white"] = composite(texture, horse_alpha, WHITE)
    return out


def jpeg(pixels: np.ndarray, size: int, quality: int = 90) -> bytes:
    """One photo as a ``size`` px square JPEG (centre crop, bicubic), as a camera would deliver it."""
    img = Image.fromarray(pixels)
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _on_background(rgb: np.ndarray, alpha: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """``rgb`` (hxwx3) with ``alpha`` (hxw, 0..1) centred on a flat ``CANVAS`` of ``background``."""
    canvas = np.empty((*CANVAS, 3), np.uint8)
    canvas[:] = background
    h, w = alpha.shape
    top, left = (CANVAS[0] - h) // 2, (CANVAS[1] - w) // 2
    canvas[top : top + h, left : left + w] = composite(rgb, alpha, background)
    return canvas


def _logo() -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's logo, a disc: its file is opaque white around the disc, so the alpha is the
    disc itself (radius where the non-white pixels end), anti-aliased over one pixel."""
    rgb = _skimage_data().logo()[::2, ::2, :3].astype(np.float32)  # 250x250
    h, w = rgb.shape[:2]
    y, x = np.mgrid[:h, :w]
    distance = np.hypot(y - (h - 1) / 2, x - (w - 1) / 2)
    radius = float(distance[rgb.min(axis=2) < 200].max())
    return rgb, np.clip(radius - distance + 0.5, 0.0, 1.0)


def _horse(texture: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The horse silhouette (a hard-edged object) filled with a real photo's texture."""
    alpha = (~_skimage_data().horse()).astype(np.float32)  # True is background in the file
    h, w = alpha.shape
    return texture[:h, :w].astype(np.float32), alpha


def calibration() -> dict[str, np.ndarray]:
    """scikit-image's colour photos of people, animals and objects in scenes: the :data:`PHOTOS`."""
    data = _skimage_data()
    return {name: getattr(data, name)() for name in PHOTOS}


def gate() -> dict[str, np.ndarray]:
    """A photo not in :func:`calibration` and composited product shots on flat backgrounds."""
    data = _skimage_data()
    logo_rgb, logo_alpha = _logo()
    coffee, brick = data.coffee(), np.repeat(data.brick()[..., None], 3, axis=2)
    horse_brown, horse_alpha = _horse(coffee[30:, 100:])
    horse_grey, _ = _horse(brick)
    return {
        "motorcycle": data.stereo_motorcycle()[0],
        "logo-white": _on_background(logo_rgb, logo_alpha, WHITE),
        "logo-grey": _on_background(logo_rgb, logo_alpha, GREY),
        "logo-dark": _on_background(logo_rgb, logo_alpha, GATE_DARK),
        "horse-white": _on_background(horse_brown, horse_alpha, WHITE),
        "horse-dark": _on_background(horse_grey, horse_alpha, GATE_DARK),
    }


def write(folder: Path) -> None:
    """Both GPU sets as PNG files in ``folder/calibration`` and ``folder/gate``."""
    for name, photos in ((CALIBRATION, calibration()), (GATE, gate())):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for photo, pixels in photos.items():
            Image.fromarray(pixels).save(folder / name / f"{photo}.png")


def read(folder: Path) -> dict[str, np.ndarray]:
    """Every photo in ``folder`` as RGB uint8, by file stem; empty when there are none."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES) if folder.is_dir() else []
    return {p.stem: np.asarray(Image.open(p).convert("RGB")) for p in paths}


if __name__ == "__main__":
    write(Path(sys.argv[1]))
