"""Header-only size checks: every allowed format's bombs are refused in milliseconds, before Pillow
parses or decodes anything, and the size read agrees with what Pillow decodes."""

from __future__ import annotations

import io
import struct
import time
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from matteserve.errors import ImageTooLarge, InvalidImage
from matteserve.loadtest.hostile import png_bomb, png_chunk, png_with
from matteserve.pipeline import header
from matteserve.pipeline.decode import ImageLimits, decode, decode_rgba, open_image, oriented_size

LIMITS = ImageLimits()
TOO_LARGE = r"above the 40\.0 MP limit"


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def small(fmt: str, **kw: object) -> bytes:
    return encode(Image.new("RGB", (64, 48), (200, 30, 60)), fmt, **kw)


def jpeg_declaring(width: int, height: int) -> bytes:
    data = small("JPEG")
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def gif_declaring(width: int, height: int) -> bytes:
    data = small("GIF")
    return data[:6] + struct.pack("<HH", width, height) + data[10:]


def gif_with_a_frame_beyond_its_screen() -> bytes:
    """A 64x48 screen whose first frame declares 60000x60000: Pillow grows the canvas to fit it."""
    data = small("GIF")
    frame = data.index(b"\x2c", 13)
    return data[: frame + 5] + struct.pack("<HH", 60000, 60000) + data[frame + 9 :]


def webp_declaring(width: int, height: int) -> bytes:
    vp8x = struct.pack("<I", 0) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + chunk_le(b"VP8X", vp8x) + small("WEBP", lossless=True)[12:]
    return b"RIFF" + struct.pack("<I", len(body)) + body


def chunk_le(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("<I", len(body)) + body


def webp_lossless_declaring(width: int, height: int) -> bytes:
    data = bytearray(small("WEBP", lossless=True))
    assert data[12:16] == b"VP8L"
    bits = struct.unpack_from("<I", data, 21)[0] & ~((1 << 28) - 1)
    struct.pack_into("<I", data, 21, bits | (width - 1) | ((height - 1) << 14))
    return bytes(data)


def bmp_declaring(width: int, height: int) -> bytes:
    data = bytearray(small("BMP"))
    struct.pack_into("<ii", data, 18, width, -height)  # top-down rows: a negative height
    return bytes(data)


def tiff_declaring(width: int, height: int, big: bool = False) -> bytes:
    data = small("TIFF", big_tiff=big) if big else small("TIFF")
    img = Image.open(io.BytesIO(data))
    assert img.size == (64, 48)
    out = bytearray(data)
    for tag, value in ((256, width), (257, height)):
        # Rewrite the tag's value wherever the writer put it (SHORT or LONG, little-endian).
        at = _tiff_tag_value_offset(bytes(out), tag, big)
        kind = struct.unpack_from("<H", out, at - (10 if big else 6))[0]
        struct.pack_into("<I" if kind == 4 else "<H", out, at, value)
    return bytes(out)


def _tiff_tag_value_offset(data: bytes, tag: int, big: bool) -> int:
    ifd = struct.unpack_from("<Q" if big else "<I", data, 8 if big else 4)[0]
    count = struct.unpack_from("<Q" if big else "<H", data, ifd)[0]
    first, size = (ifd + 8, 20) if big else (ifd + 2, 12)
    for i in range(count):
        at = first + i * size
        if struct.unpack_from("<H", data, at)[0] == tag:
            return at + (12 if big else 8)
    raise AssertionError(f"no tag {tag}")


BOMBS: dict[str, Callable[[], bytes]] = {
    "PNG 20000x20000 1-bit (48 KB, 400 MP)": lambda: png_bomb(20000),
    "JPEG declaring 65000x65000": lambda: jpeg_declaring(65000, 65000),
    "GIF screen 65535x65535": lambda: gif_declaring(65535, 65535),
    "GIF first frame beyond its screen": gif_with_a_frame_beyond_its_screen,
    "WebP VP8X canvas 16000x16000": lambda: webp_declaring(16000, 16000),
    "WebP lossless 16000x16000": lambda: webp_lossless_declaring(16000, 16000),
    "BMP 100000x100000 top-down": lambda: bmp_declaring(100_000, 100_000),
    "TIFF 100000x100000": lambda: tiff_declaring(100_000, 100_000),
    "BigTIFF 100000x100000": lambda: tiff_declaring(100_000, 100_000, big=True),
}


@pytest.mark.parametrize("make", BOMBS.values(), ids=BOMBS.keys())
def test_a_bomb_of_every_format_is_refused_in_milliseconds_with_its_size(make: Callable[[], bytes]) -> None:
    data = make()
    start = time.thread_time()
    with pytest.raises(ImageTooLarge, match=TOO_LARGE):
        decode(data, LIMITS)
    assert time.thread_time() - start < 0.05  # CPU seconds; decoding any of these takes seconds


@pytest.mark.parametrize("make", BOMBS.values(), ids=BOMBS.keys())
def test_a_bomb_is_refused_before_pillow_allocates_any_pixels(make: Callable[[], bytes]) -> None:
    data = make()
    images_before = Image.core.get_stats()["new_count"]
    with pytest.raises(ImageTooLarge):
        open_image(data, LIMITS)
    assert Image.core.get_stats()["new_count"] == images_before


def test_a_png_text_chunk_flood_is_refused_before_pillow_parses_it() -> None:
    data = png_with(before_idat=png_chunk(b"tEXt", b"k\x00v") * 500_000)
    start = time.thread_time()
    with pytest.raises(InvalidImage, match="more than 1024 metadata chunks"):
        open_image(data, LIMITS)
    assert time.thread_time() - start < 0.05  # Pillow takes ~1 s to parse these chunks


def test_a_png_of_many_small_image_data_chunks_is_refused_past_the_walk_bound() -> None:
    data = png_with(after_idat=png_chunk(b"IDAT", b"") * header.MAX_PNG_CHUNKS)
    with pytest.raises(InvalidImage, match="more than 65536 chunks"):
        open_image(data, LIMITS)


def exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes().removeprefix(b"Exif\x00\x00")


@pytest.mark.parametrize("where", ["before", "after"])
def test_png_orientation_comes_from_exif_wherever_it_is_without_decoding_the_pixels(where: str) -> None:
    exif = png_chunk(b"eXIf", exif_orientation(6))
    data = png_with(**{f"{where}_idat": exif})
    img = open_image(data, LIMITS)
    assert oriented_size(img) == (48, 64)
    assert img.tile, "the pixels were decoded to find the orientation"
    assert decode_rgba(img, data).shape[:2] == (64, 48)  # what the decode shows agrees


@pytest.mark.parametrize(
    ("fmt", "mode", "save"),
    [
        ("JPEG", "RGB", {}),
        ("JPEG", "L", {"progressive": True}),
        ("JPEG", "CMYK", {}),
        ("PNG", "RGBA", {}),
        ("PNG", "1", {}),
        ("PNG", "P", {"optimize": True}),
        ("PNG", "I;16", {}),
        ("WEBP", "RGB", {"quality": 80}),
        ("WEBP", "RGBA", {"lossless": True}),
        ("WEBP", "RGBA", {"quality": 50, "exif": exif_orientation(6)}),
        ("BMP", "RGB", {}),
        ("BMP", "1", {}),
        ("TIFF", "RGB", {"compression": "tiff_lzw"}),
        ("TIFF", "CMYK", {}),
        ("TIFF", "RGB", {"big_tiff": True}),
        ("GIF", "P", {}),
        ("GIF", "RGB", {"comment": b"x" * 5000}),
    ],
)
def test_the_header_size_of_every_format_is_the_size_pillow_decodes(fmt: str, mode: str, save: dict) -> None:
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)).convert(mode)
    data = encode(img, fmt, **save)
    found = header.read_header(data)
    assert (found.format, found.width, found.height) == (fmt, 53, 37)
    assert open_image(data, LIMITS).size == (53, 37)


def test_an_animated_webp_reports_its_canvas() -> None:
    frames = [Image.new("RGBA", (40, 30), (i * 40, 0, 0, 255)) for i in range(3)]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:])
    found = header.read_header(data)
    assert (found.width, found.height) == (40, 30)
    assert open_image(data, LIMITS).size == (40, 30)


def test_pillows_own_guards_stay_on_behind_the_header_check() -> None:
    assert Image.MAX_IMAGE_PIXELS is not None
    with pytest.raises(ValueError, match="at most"):
        ImageLimits(max_pixels=Image.MAX_IMAGE_PIXELS + 1)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "runs past the end"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR", "truncated"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x04tEXtabcd", "does not start with IHDR"),
        (b"GIF89a\x10\x00\x10\x00\x00\x00\x00;", "no image before its end"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "bad lossy start code"),
        (b"BM" + bytes(12) + struct.pack("<I", 99) + bytes(40), "unknown header size 99"),
        (b"II*\x00\x08\x00\x00\x00\x00\x00", "no image width or height"),
    ],
)
def test_broken_headers_are_invalid_images_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(InvalidImage, match=message):
        open_image(data, LIMITS)
