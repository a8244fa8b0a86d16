"""The held-out photos every parity gate of the build is measured on.

Real photographs that scikit-image ships (a portrait with hair on a studio backdrop, a cat's fur, a
product on a table, a rocket against the sky) and composites of cut-out foregrounds over the
backgrounds product photography uses: pure white, a flat colour and near black. The composites are
made here from known alphas (scikit-image's round logo, its horse silhouette, a feathered oval around
the cat's head), so the set needs no download. The build never tunes on these photos: they only
judge a faster runtime or precision against the FP32 reference.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from matteserve.errors import ModelError
from matteserve.loadtest.images import PHOTOS

WHITE, FLAT, DARK = (255, 255, 255), (96, 140, 196), (18, 18, 22)


def _skimage_data():  # type: ignore[no-untyped-def]
    try:
        import skimage.data
    except ImportError:
        raise ModelError(
            "the build's parity gates run on scikit-image's photos: pip install 'matteserve[loadtest]'"
        ) from None
    return skimage.data


def composite(foreground: np.ndarray, alpha: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """``foreground`` (HxWx3 uint8) over a flat ``background`` through ``alpha`` (HxW float in [0, 1])."""
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
    out: dict[str, np.ndarray] = {name: getattr(data, name)() for name in PHOTOS}
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
