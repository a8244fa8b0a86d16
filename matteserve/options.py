"""Per-request options: what the caller wants back.

They travel through the Triton ensemble as one small JSON input (``OPTIONS``) so every output format
is chosen per request without separate models. An empty value means the defaults.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass

from matteserve.errors import InvalidOptions, quote


class OutputFormat(str, enum.Enum):
    PNG = "png"  # RGBA cutout, straight (not premultiplied) alpha
    MASK = "mask"  # grayscale PNG of the alpha
    WEBP = "webp"  # lossy WebP with alpha
    JPEG = "jpeg"  # composited over ``background``
    RAW = "raw"  # the alpha as height*width UINT8 bytes, row-major


CONTENT_TYPES = {
    OutputFormat.PNG: "image/png",
    OutputFormat.MASK: "image/png",
    OutputFormat.WEBP: "image/webp",
    OutputFormat.JPEG: "image/jpeg",
    OutputFormat.RAW: "application/octet-stream",
}

_HEX_COLOUR = re.compile(r"#?([0-9a-fA-F]{6})")
# ASCII digits only: str.isdigit() also accepts '²' and other digits that int() refuses.
_CHANNEL = re.compile(r"\s*([0-9]{1,3})\s*")


def parse_colour(text: str) -> tuple[int, int, int]:
    """'#ffffff', 'ffffff' or '255,255,255' -> (r, g, b)."""
    if m := _HEX_COLOUR.fullmatch(text.strip()):
        value = int(m.group(1), 16)
        return (value >> 16) & 255, (value >> 8) & 255, value & 255
    matches = [_CHANNEL.fullmatch(part) for part in text.split(",")]
    if len(matches) == 3:
        channels = [int(m.group(1)) for m in matches if m]
        if len(channels) == 3 and max(channels) <= 255:
            return channels[0], channels[1], channels[2]
    raise InvalidOptions(f"background must be '#rrggbb' or 'r,g,b' with values 0-255, got {quote(text)}")


@dataclass(frozen=True)
class RequestOptions:
    format: OutputFormat = OutputFormat.PNG
    background: tuple[int, int, int] = (255, 255, 255)
    quality: int = 90
    refine: bool = False  # snap the matte to the photo's edges (guided filter); costs CPU per pixel

    def __post_init__(self) -> None:
        if not 1 <= self.quality <= 100:
            raise InvalidOptions(f"quality must be 1-100, got {self.quality}")

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]

    def to_json(self) -> bytes:
        r, g, b = self.background
        return json.dumps(
            {
                "format": self.format.value,
                "background": f"#{r:02x}{g:02x}{b:02x}",
                "quality": self.quality,
                "refine": self.refine,
            }
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> RequestOptions:
        if not raw.strip():
            return cls()
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InvalidOptions(f"options must be a JSON object: {e}") from e
        if not isinstance(data, dict):
            raise InvalidOptions('options must be a JSON object such as {"format": "png"}')
        unknown = sorted(set(data) - {"format", "background", "quality", "refine"})
        if unknown:
            raise InvalidOptions(f"unknown option(s) {unknown}; known: format, background, quality, refine")
        kwargs: dict[str, object] = {}
        if "format" in data:
            try:
                kwargs["format"] = OutputFormat(data["format"])
            except ValueError:
                known = ", ".join(f.value for f in OutputFormat)
                raise InvalidOptions(f"unknown format {data['format']!r}; known: {known}") from None
        if "background" in data:
            if not isinstance(data["background"], str):
                raise InvalidOptions("background must be a string such as '#ffffff'")
            kwargs["background"] = parse_colour(data["background"])
        if "quality" in data:
            if not isinstance(data["quality"], int) or isinstance(data["quality"], bool):
                raise InvalidOptions(f"quality must be an integer 1-100, got {quote(str(data['quality']))}")
            kwargs["quality"] = data["quality"]
        if "refine" in data:
            if not isinstance(data["refine"], bool):
                raise InvalidOptions(f"refine must be true or false, got {quote(str(data['refine']))}")
            kwargs["refine"] = data["refine"]
        return cls(**kwargs)  # type: ignore[arg-type]
