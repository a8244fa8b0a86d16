"""How close a rewritten graph or an engine comes to the original model, on real photos.

Alphas are compared as floats in [0, 1] at the model's resolution. The reference is the original
ONNX in FP32 onnxruntime after :func:`matteserve.pipeline.tensor.normalise`, with the spec's output
selection, activation and min-max/clip applied in float64 (what the served CPU path does before
rounding to uint8).

Edges: a pixel is on an edge when it lies within :data:`EDGE_RADIUS` pixels (Chebyshev distance) of
a pixel of the reference alpha's transition zone: a 0.5 crossing (``alpha >= 0.5`` differs from
one of its 4 neighbours') or a pixel neither confidently background nor foreground
(:data:`EDGE_LOW` < alpha < :data:`EDGE_HIGH`: hair, fur, blur). There the model is uncertain and a
few FP16 roundings move the alpha most (measured on u2netp: the largest FP16 differences sit at
reference alphas of 0.4-0.9), while a change of a few percent in a half-transparent pixel is not
visible. Off edges, where the matte is solid 0 or 1, a difference would show as a ghost or a hole:
the FP16 criterion bounds the maximum there, and the mean everywhere. Every report prints the
share of pixels counted as edge, so a photo that is mostly transition zone is seen as such.

Edges are not left unchecked: the 99th percentile of the difference inside them is bounded, and
the foreground itself (alpha >= 0.5) must overlap the reference's with an IoU near 1, so a hole or
a lost limb fails even when it sits in a transition zone. Checks run one image at a time and in a
batch of :data:`GATE_BATCH` (engines pick other kernels for other batch sizes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import numpy as np

from matteserve.pipeline import tensor
from matteserve.zoo import Activation, ModelSpec, OutputNorm

EDGE_RADIUS = 2
EDGE_LOW, EDGE_HIGH = 0.05, 0.95
# FP32 rewrites (static resizes, constant folding, the uint8/alpha fold) reorder float arithmetic
# only: measured <= 7e-6 on u2netp; anything near this bound is a wrong rewrite, not rounding.
FP32_MAX_ABS = 1e-4
# FP16 (graph or engine) against the FP32 reference.
FP16_MEAN_ABS = 1 / 255
FP16_MAX_ABS_OFF_EDGE = 8 / 255
FP16_EDGE_P99 = 16 / 255
FP16_MIN_IOU = 0.99
FP32_MIN_IOU = 0.999
GATE_BATCH = 32

Alphas = Callable[[np.ndarray], np.ndarray]  # uint8 [N, H, W, 3] pixels -> float alpha [N, H, W]


@dataclass(frozen=True)
class PhotoParity:
    photo: str
    mean_abs: float
    max_abs: float
    max_abs_off_edge: float
    edge_share: float  # share of the pixels counted as edge
    edge_p99: float = 0.0  # 99th percentile of the difference inside edges
    iou: float = 1.0  # of the foregrounds (alpha >= 0.5)


@dataclass(frozen=True)
class ParityReport:
    what: str
    photos: tuple[PhotoParity, ...]
    mean_abs_limit: float
    max_abs_off_edge_limit: float
    min_iou: float = 0.0
    edge_p99_limit: float = 1.0
    batch: int = 1

    def photo_passed(self, p: PhotoParity) -> bool:
        return (
            p.mean_abs <= self.mean_abs_limit
            and p.max_abs_off_edge <= self.max_abs_off_edge_limit
            and p.edge_p99 <= self.edge_p99_limit
            and p.iou >= self.min_iou
        )

    @property
    def passed(self) -> bool:
        return all(self.photo_passed(p) for p in self.photos)

    def table(self) -> str:
        """The report in 1/255 units, one photo a line, as the build prints it."""
        head = (
            f"parity of {self.what}, batch {self.batch} (alpha differences in 1/255; limits: mean <= "
            f"{self.mean_abs_limit * 255:g}, max off edges <= {self.max_abs_off_edge_limit * 255:g}, "
            f"p99 on edges <= {self.edge_p99_limit * 255:g}, IoU(0.5) >= {self.min_iou:g})"
        )
        rows = [
            f"  {'photo':12} {'mean':>7} {'max':>7} {'max off edges':>14} {'p99 edges':>10} {'IoU':>7} {'edge px':>8}"
        ]
        for p in self.photos:
            rows.append(
                f"  {p.photo:12} {p.mean_abs * 255:7.3f} {p.max_abs * 255:7.2f} "
                f"{p.max_abs_off_edge * 255:14.2f} {p.edge_p99 * 255:10.2f} {p.iou:7.4f} {p.edge_share:8.1%}"
                + ("" if self.photo_passed(p) else "  <- over a limit")
            )
        rows.append(f"  {'PASSED' if self.passed else 'FAILED'}")
        return "\n".join([head, *rows])

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = asdict(self) | {"passed": self.passed}
        return out


def reference_alpha(prediction: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """One image's raw output (HxW) -> alpha in [0, 1], :func:`tensor.finalise_alpha` before x255."""
    pred = prediction.astype(np.float64)
    if spec.activation is Activation.SIGMOID:
        pred = 1.0 / (1.0 + np.exp(-pred))
    if spec.output_norm is OutputNorm.MIN_MAX:
        lo, hi = pred.min(), pred.max()
        return (pred - lo) / (hi - lo) if hi > lo else np.zeros_like(pred)
    return np.clip(pred, 0.0, 1.0)


def reference(session: object, spec: ModelSpec) -> Alphas:
    """The original ONNX (FP32 input) as an :data:`Alphas` function."""
    name = session.get_inputs()[0].name  # type: ignore[attr-defined]

    def run(pixels: np.ndarray) -> np.ndarray:
        x = np.stack([tensor.normalise(p, spec) for p in pixels])
        outputs = session.run(None, {name: x})  # type: ignore[attr-defined]
        return np.stack([reference_alpha(p, spec) for p in tensor.select_output(outputs, spec)])

    return run


def edges(alpha: np.ndarray, radius: int = EDGE_RADIUS) -> np.ndarray:
    """Boolean HxW: within ``radius`` px of a 0.5 crossing of ``alpha`` (see the module doc)."""
    inside = alpha >= 0.5
    crossing = (alpha > EDGE_LOW) & (alpha < EDGE_HIGH)
    crossing[1:, :] |= inside[1:, :] != inside[:-1, :]
    crossing[:-1, :] |= inside[1:, :] != inside[:-1, :]
    crossing[:, 1:] |= inside[:, 1:] != inside[:, :-1]
    crossing[:, :-1] |= inside[:, 1:] != inside[:, :-1]
    padded = np.pad(crossing, radius)
    height, width = alpha.shape
    band = np.zeros_like(inside)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            band |= padded[dy : dy + height, dx : dx + width]
    return band


def compare(photo: str, expected: np.ndarray, actual: np.ndarray) -> PhotoParity:
    diff = np.abs(actual.astype(np.float64) - expected)
    band = edges(expected)
    off, on = diff[~band], diff[band]
    return PhotoParity(
        photo=photo,
        mean_abs=float(diff.mean()),
        max_abs=float(diff.max()),
        max_abs_off_edge=float(off.max()) if off.size else 0.0,
        edge_share=float(band.mean()),
        edge_p99=float(np.percentile(on, 99)) if on.size else 0.0,
        iou=iou(expected, actual),
    )


def iou(expected: np.ndarray, actual: np.ndarray, threshold: float = 0.5) -> float:
    """Intersection over union of the two foregrounds; 1.0 when both are empty."""
    a, b = expected >= threshold, actual >= threshold
    union = int(np.count_nonzero(a | b))
    return float(np.count_nonzero(a & b) / union) if union else 1.0


def _worst(photo: str, comparisons: list[PhotoParity]) -> PhotoParity:
    """One photo's worst figures over its copies in a batch."""
    return PhotoParity(
        photo=photo,
        mean_abs=max(c.mean_abs for c in comparisons),
        max_abs=max(c.max_abs for c in comparisons),
        max_abs_off_edge=max(c.max_abs_off_edge for c in comparisons),
        edge_share=comparisons[0].edge_share,
        edge_p99=max(c.edge_p99 for c in comparisons),
        iou=min(c.iou for c in comparisons),
    )


def check(
    what: str,
    expected: Alphas,
    actual: Alphas,
    pixels: Mapping[str, np.ndarray],
    mean_abs_limit: float,
    max_abs_off_edge_limit: float,
    min_iou: float = 0.0,
    edge_p99_limit: float = 1.0,
    batch: int = 1,
) -> ParityReport:
    """Run both on every photo (uint8 HxWx3 at the model's size). The reference runs one image at a
    time; ``actual`` does too with ``batch=1``, else it gets batches of ``batch`` images made of
    the photos in turn (repeated to fill), and each photo's worst copy is reported."""
    names = list(pixels)
    wanted = {name: expected(pixels[name][None])[0] for name in names}
    if batch == 1:
        photos = [compare(name, wanted[name], actual(pixels[name][None])[0]) for name in names]
        return ParityReport(what, tuple(photos), mean_abs_limit, max_abs_off_edge_limit, min_iou, edge_p99_limit)
    order = [names[i % len(names)] for i in range(max(batch, len(names)))]
    found: dict[str, list[PhotoParity]] = {name: [] for name in names}
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        alphas = actual(np.stack([pixels[name] for name in chunk]))
        for name, alpha in zip(chunk, alphas, strict=True):
            found[name].append(compare(name, wanted[name], alpha))
    photos = [_worst(name, found[name]) for name in names]
    return ParityReport(what, tuple(photos), mean_abs_limit, max_abs_off_edge_limit, min_iou, edge_p99_limit, batch)


def fp32_limits() -> tuple[float, float, float, float]:
    """An FP32 rewrite must match everywhere, edges included."""
    return FP32_MAX_ABS, FP32_MAX_ABS, FP32_MIN_IOU, FP32_MAX_ABS


def fp16_limits() -> tuple[float, float, float, float]:
    return FP16_MEAN_ABS, FP16_MAX_ABS_OFF_EDGE, FP16_MIN_IOU, FP16_EDGE_P99


def folded(session: object) -> Alphas:
    """A folded graph (uint8 ``PIXELS`` in, ``ALPHA`` out) in onnxruntime as an :data:`Alphas`."""

    def run(pixels: np.ndarray) -> np.ndarray:
        alpha: np.ndarray = session.run(["ALPHA"], {"PIXELS": pixels})[0]  # type: ignore[attr-defined]
        return alpha

    return run


def sample_pixels(photos: Mapping[str, np.ndarray], spec: ModelSpec) -> dict[str, np.ndarray]:
    """Photos (HxWx3 uint8 at any size) -> the model-sized uint8 pixels preprocess would send."""
    from PIL import Image

    return {
        name: tensor.resize_for_model(Image.fromarray(arr), spec, (arr.shape[1], arr.shape[0]))
        for name, arr in photos.items()
    }
