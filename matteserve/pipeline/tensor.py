"""Between images and the model: resize and normalise its input, turn its output into an alpha matte."""

from __future__ import annotations

import numpy as np
from PIL import Image

from matteserve.zoo import Activation, ModelSpec, OutputNorm, Resample, Scaling

_RESAMPLE = {Resample.LANCZOS: Image.Resampling.LANCZOS, Resample.BILINEAR: Image.Resampling.BILINEAR}


def resize_for_model(rgb: Image.Image, spec: ModelSpec, size: tuple[int, int]) -> np.ndarray:
    """The model-sized RGB pixels, HxWx3 uint8, resized the way the model was trained."""
    width, height = spec.input_size(*size)
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), _RESAMPLE[spec.resample])
    return np.asarray(rgb)


def normalise(pixels: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """HxWx3 uint8 -> 3xHxW float32: (pixels / scale - mean) / std, per channel.

    Written as one multiply-add per channel into a preallocated planar array: no float64 copy.
    """
    # rembg divides by the image's largest value; an all-black image would divide by zero there.
    denominator = float(max(int(pixels.max()), 1)) if spec.scaling is Scaling.IMAGE_MAX else 255.0
    height, width, _ = pixels.shape
    out = np.empty((3, height, width), dtype=np.float32)
    for c in range(3):
        scale = 1.0 / (denominator * spec.std[c])
        np.multiply(pixels[:, :, c], np.float32(scale), out=out[c], dtype=np.float32)
        out[c] -= np.float32(spec.mean[c] / spec.std[c])
    return out


def finalise_alpha(prediction: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """One image's raw model output (HxW float) -> the alpha matte, HxW uint8.

    Applies the spec's activation, then min-max stretches (as rembg does) or clips to [0, 1].
    """
    pred = prediction.astype(np.float32, copy=False)
    if spec.activation is Activation.SIGMOID:
        pred = 1.0 / (1.0 + np.exp(-pred))
    if spec.output_norm is OutputNorm.MIN_MAX:
        lo, hi = float(pred.min()), float(pred.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        alpha = (pred - lo) * scale
    else:
        alpha = np.clip(pred, 0.0, 1.0) * 255.0
    return np.rint(alpha).astype(np.uint8)


def alpha_to_uint8(alpha: np.ndarray) -> np.ndarray:
    """An alpha in [0, 1] (the GPU engine's FP32 output) -> uint8, rounded as finalise_alpha does."""
    return np.rint(np.clip(alpha, 0.0, 1.0) * 255.0).astype(np.uint8)


def select_output(outputs: list[np.ndarray], spec: ModelSpec) -> np.ndarray:
    """The spec's output as a batch of HxW predictions (channel 0 of an NCHW or an NHW tensor)."""
    out = outputs[spec.output_index]
    if out.ndim == 4:
        return out[:, 0]
    if out.ndim == 3:
        return out
    raise ValueError(f"model output {spec.output_index} has shape {out.shape}; expected NxCxHxW or NxHxW")
