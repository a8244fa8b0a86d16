"""The three serving stages as plain functions over bytes and arrays.

Triton's python models (``model_repository/*/1/model.py``) and the in-process pipeline both call
these, so what is served and what is tested as the reference are the same code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops

from matteserve import contract, runtimes
from matteserve.options import OutputFormat, RequestOptions
from matteserve.pipeline import decode, output, refine, tensor
from matteserve.zoo import ModelSpec

logger = logging.getLogger(__name__)

# JPEGs are DCT-decoded at a reduced scale no smaller than this multiple of the model input, so the
# model's LANCZOS resize still sees enough pixels to match a full decode closely (at 1.0 the served
# matte drifted up to 5/255 on average from rembg's on some photos; at 1.5 it stays within 0.1/255 of
# a full decode's drift) while a 1024 px photo decodes at half scale.
DRAFT_HEADROOM = 1.5


def preprocess(
    data: bytes, raw_options: bytes, spec: ModelSpec, limits: decode.ImageLimits, uint8: bool = False
) -> np.ndarray:
    """Image bytes -> the model's normalised 3xHxW float32 input, or with ``uint8`` the resized HxWx3
    pixels for a graph that normalises them itself (the GPU engine). Options are validated here,
    before any model time is spent on a request that would fail later."""
    RequestOptions.from_json(raw_options)
    img = decode.open_image(data, limits)
    size = decode.oriented_size(img)
    model_w, model_h = spec.input_size(*size)
    rgb = decode.decode_rgb(img, min_size=(int(model_w * DRAFT_HEADROOM), int(model_h * DRAFT_HEADROOM)))
    pixels = tensor.resize_for_model(rgb, spec, size)
    return pixels if uint8 else tensor.normalise(pixels, spec)


@dataclass(frozen=True)
class Result:
    data: bytes
    content_type: str
    width: int
    height: int


def postprocess(data: bytes, raw_options: bytes, alpha: np.ndarray, limits: decode.ImageLimits) -> Result:
    """The model's alpha (HxW: uint8 from the CPU model, float in [0, 1] from the GPU engine) + the
    original bytes -> the encoded result at the original size.

    What was already transparent in the input stays transparent: the matte is multiplied by the
    input's own alpha where it has one (product shots often arrive already cut out).
    """
    options = RequestOptions.from_json(raw_options)
    img = decode.open_image(data, limits)
    size = decode.oriented_size(img)
    if alpha.dtype != np.uint8:
        alpha = tensor.alpha_to_uint8(alpha)
    matte = output.upsample_alpha(alpha, size)
    fmt = options.format
    if fmt in (OutputFormat.PNG, OutputFormat.WEBP):
        rgba = decode.decode_rgba(img, data)
        if options.refine:
            matte = refine.guided_refine(matte, refine.luma(rgba))
        if decode.has_alpha(img):
            matte = ((matte.astype(np.uint16) * rgba[:, :, 3] + 127) // 255).astype(np.uint8)
        output.put_matte(rgba, matte, clear=fmt is OutputFormat.PNG)
        return Result(output.encode_cutout(rgba, options), options.content_type, *size)
    rgb = source_alpha = None
    if decode.has_alpha(img):
        rgb, source_alpha = decode.decode_with_alpha(img)
    elif fmt is OutputFormat.JPEG or options.refine:
        rgb = output.rgbx_image(decode.decode_rgba(img, data))
    if options.refine and rgb is not None:
        matte = refine.guided_refine(matte, refine.luma(np.asarray(rgb)))
    mask = Image.fromarray(matte, "L")
    if source_alpha is not None:
        mask = ImageChops.multiply(mask, source_alpha)
    if rgb is not None and fmt is OutputFormat.JPEG:
        return Result(output.encode_composite(mask, rgb, options), options.content_type, *size)
    return Result(output.encode_matte(mask, options), options.content_type, *size)


class MattingRunner:
    """Runs a matting ONNX (in the runtime ``settings`` names) on batches of preprocessed inputs."""

    def __init__(
        self, onnx_path: Path, spec: ModelSpec, threads: int = 0, settings: runtimes.RuntimeSettings | None = None
    ) -> None:
        self.session = runtimes.open_session(onnx_path, settings or runtimes.RuntimeSettings(threads=threads))
        self.spec = spec
        # A graph folded by matteserve.build.gpu.graph takes uint8 HxWx3 pixels and returns the alpha.
        self.folded = self.session.input_name == contract.PIXELS

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Inputs of one shape (3xHxW float32 each, HxWx3 uint8 for a folded graph) -> one HxW uint8
        alpha each, in one model call."""
        batch = np.stack(inputs) if len(inputs) > 1 else inputs[0][None]
        outputs = self.session.run(batch)
        if self.folded:
            return list(tensor.alpha_to_uint8(outputs[self.session.output_names.index(contract.ALPHA)]))
        predictions = tensor.select_output(outputs, self.spec)
        return [tensor.finalise_alpha(p, self.spec) for p in predictions]

    def run_grouped(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Like :meth:`run` for inputs of mixed shapes (size-rule models): one call per shape."""
        results: list[np.ndarray | None] = [None] * len(inputs)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(inputs):
            by_shape.setdefault(x.shape, []).append(i)
        for indices in by_shape.values():
            for i, alpha in zip(indices, self.run([inputs[i] for i in indices]), strict=True):
                results[i] = alpha
        return [r for r in results if r is not None]


def elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
