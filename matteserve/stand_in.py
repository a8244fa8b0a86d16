"""The stand-in matting step: no model, the same fixed matte for every image, in about no time.

It measures what the serving stack itself costs (Triton, decode, resize, encode, gRPC): with the model
out of the way, images/s and CPU per image are the CPU-side ceiling of a node whose accelerator is
never the bottleneck. Its cut-outs mean nothing, so ``matteserve serve`` refuses a stand-in
repository unless asked for it explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

MODEL = "null"  # the zoo name: ``matteserve build --model null``
RUNTIME = "stand-in"  # the matting config's ``runtime`` parameter that selects it


@lru_cache(maxsize=8)
def fixed_matte(height: int, width: int) -> np.ndarray:
    """A centred ellipse, opaque inside, clear outside, with a soft edge a few pixels wide: shaped
    like a real subject's matte, so upsampling and encoding cost what they cost on a real cut-out
    (about half of the frame transparent, as on the photo set)."""
    y, x = np.mgrid[-1 : 1 : height * 1j, -1 : 1 : width * 1j]
    distance = np.hypot(x / 0.8, y / 0.9)  # 1.0 on the ellipse's edge
    matte = np.clip((1.0 - distance) * 25 + 0.5, 0.0, 1.0) * 255
    out = np.rint(matte).astype(np.uint8)
    out.flags.writeable = False
    return out


class StandInRunner:
    """Takes what ``MattingRunner`` takes (3xHxW float32 or HxWx3 uint8 per image) and returns the
    fixed matte at the model's resolution for each."""

    def run_grouped(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [fixed_matte(*_model_size(x)) for x in inputs]


def _model_size(pixels: np.ndarray) -> tuple[int, int]:
    """(height, width) of one model input: planar float32, or interleaved uint8 for a folded graph."""
    return (pixels.shape[1], pixels.shape[2]) if pixels.dtype == np.float32 else (pixels.shape[0], pixels.shape[1])
