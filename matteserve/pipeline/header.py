"""The declared size of an untrusted image, read from its header bytes alone.

Nothing here decodes pixels, decompresses a chunk or calls Pillow, and every walk over segments,
chunks, blocks or tags stops at a fixed count, so the cost of a header check is bounded whatever the
bytes claim: a 437 KB PNG that declares 60000x60000 is refused in microseconds, and a PNG carrying
500k text chunks is refused after the first few thousand. The sizes are those Pillow will report for
the same bytes (open_image checks that they agree), so the limit checked here is the one decoded.

EXIF orientation is not read: it only swaps width and height, which changes neither the pixel count,
the shorter side nor the aspect ratio that the limits are about.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

from matteserve.errors import InvalidImage

# Walk bounds. Real files stay far below them (a camera JPEG has ~15 segments, a PNG a few dozen
# metadata chunks, a TIFF ~30 tags); past them a file is refused rather than parsed further.
MAX_JPEG_SEGMENTS = 1024
MAX_PNG_METADATA_CHUNKS = 1024  # every chunk but image data (IDAT, fdAT)
MAX_PNG_CHUNKS = 65536  # image data included: libpng writes 8 KB IDATs, 512 MB of them
MAX_GIF_BLOCKS = 8192  # extension sub-blocks before the first frame (255 bytes each)
MAX_TIFF_TAGS = 1024
MAX_WEBP_CHUNKS = 1024


@dataclass(frozen=True)
class Header:
    format: str  # Pillow's name: JPEG, PNG, WEBP, BMP, TIFF, GIF
    width: int
    height: int
    # PNG only: the payload of its last eXIf chunk, even one after the image data (Pillow applies
    # that one too once the pixels are loaded, so the oriented size must come from it).
    exif: bytes | None = None


def read_header(data: bytes) -> Header:
    """The format and stored (width, height) of ``data``; InvalidImage if it is none of the six."""
    for magic, reader in _READERS:
        if data.startswith(magic):
            try:
                return reader(data)
            except (struct.error, IndexError):
                raise InvalidImage(f"the {reader.__name__[6:].upper()} header is truncated") from None
    raise InvalidImage(
        f"not a supported image ({len(data)} bytes starting {data[:8]!r}); send JPEG, PNG, WebP, BMP, TIFF or GIF"
    )


def _read_jpeg(data: bytes) -> Header:
    size: tuple[int, int] | None = None
    pos = 2
    for _ in range(MAX_JPEG_SEGMENTS):
        fill = _FILL.match(data, pos)  # a marker, after any number of fill bytes
        if fill is None:
            raise InvalidImage("the JPEG header is corrupt: a segment does not start with a marker")
        pos = fill.end()
        code = data[pos]
        pos += 1
        if 0xD0 <= code <= 0xD7 or code == 0x01:  # markers without a length
            continue
        if code == 0xD9:
            break
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2 or pos + length > len(data):
            raise InvalidImage(f"the JPEG header is corrupt: segment FF{code:02X} runs past the end")
        if code in _SOF_MARKERS:
            height, width = struct.unpack_from(">HH", data, pos + 3)
            size = (width, height)
        if code == 0xDA:  # start of scan: the pixels follow
            if size is None:
                break
            return Header("JPEG", *size)
        pos += length
    else:
        raise InvalidImage(f"the JPEG has more than {MAX_JPEG_SEGMENTS} segments before its pixels; strip its metadata")
    raise InvalidImage("the JPEG header is corrupt: no frame header before the image data")


_FILL = re.compile(rb"\xff+")
# Start-of-frame markers (baseline, progressive, lossless, arithmetic); C4, C8 and CC are not frames.
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _read_png(data: bytes) -> Header:
    pos = 8
    length, kind = struct.unpack_from(">I4s", data, pos)
    if kind != b"IHDR" or length != 13:
        raise InvalidImage("the PNG header is corrupt: it does not start with IHDR")
    width, height = struct.unpack_from(">II", data, pos + 8)
    exif = None
    metadata = 0
    seen_pixels = False
    for _ in range(MAX_PNG_CHUNKS):
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > len(data):
            if seen_pixels:  # a truncated tail is the pixel decoder's to report
                return Header("PNG", width, height, exif)
            raise InvalidImage(f"the PNG header is corrupt: chunk {kind!r} runs past the end")
        if kind in (b"IDAT", b"fdAT"):
            seen_pixels = True
        else:
            metadata += 1
            if metadata > MAX_PNG_METADATA_CHUNKS:
                raise InvalidImage(f"the PNG has more than {MAX_PNG_METADATA_CHUNKS} metadata chunks; strip them")
            if kind == b"eXIf" and zlib.crc32(data[pos + 4 : end - 4]) == struct.unpack_from(">I", data, end - 4)[0]:
                exif = b"Exif\x00\x00" + data[pos + 8 : end - 4]
            if kind == b"IEND":
                break
        pos = end
        if pos == len(data):
            break
    else:
        raise InvalidImage(f"the PNG has more than {MAX_PNG_CHUNKS} chunks; re-encode it")
    if not seen_pixels:
        raise InvalidImage("the PNG header is corrupt: it has no image data")
    return Header("PNG", width, height, exif)


def _read_gif(data: bytes) -> Header:
    screen_w, screen_h, flags = struct.unpack_from("<HHB", data, 6)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    blocks = 0
    while True:
        introducer = data[pos]
        if introducer == 0x2C:  # image descriptor: Pillow grows the canvas to fit the first frame
            left, top, w, h = struct.unpack_from("<HHHH", data, pos + 1)
            return Header("GIF", max(screen_w, left + w), max(screen_h, top + h))
        if introducer != 0x21:
            raise InvalidImage("the GIF has no image before its end")
        pos += 2  # introducer and label
        while (size := data[pos]) != 0:
            blocks += 1
            if blocks > MAX_GIF_BLOCKS:
                raise InvalidImage(f"the GIF has more than {MAX_GIF_BLOCKS} extension blocks before its first image")
            pos += 1 + size
        pos += 1


def _read_webp(data: bytes) -> Header:
    if data[8:12] != b"WEBP":
        raise InvalidImage("the WebP header is corrupt: RIFF without WEBP")
    kind = data[12:16]
    body = 20
    if kind == b"VP8X":
        if len(data) < body + 10:
            raise IndexError
        w_minus_1 = int.from_bytes(data[body + 4 : body + 7], "little")
        h_minus_1 = int.from_bytes(data[body + 7 : body + 10], "little")
        return Header("WEBP", w_minus_1 + 1, h_minus_1 + 1)
    if kind == b"VP8L":
        if data[body] != 0x2F:
            raise InvalidImage("the WebP header is corrupt: bad lossless signature")
        (bits,) = struct.unpack_from("<I", data, body + 1)
        return Header("WEBP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if kind == b"VP8 ":
        if data[body + 3 : body + 6] != b"\x9d\x01\x2a":
            raise InvalidImage("the WebP header is corrupt: bad lossy start code")
        w, h = struct.unpack_from("<HH", data, body + 6)
        return Header("WEBP", w & 0x3FFF, h & 0x3FFF)
    raise InvalidImage(f"the WebP header is corrupt: unknown first chunk {kind!r}")


def _read_bmp(data: bytes) -> Header:
    (header_size,) = struct.unpack_from("<I", data, 14)
    if header_size == 12:
        w, h = struct.unpack_from("<HH", data, 18)
        return Header("BMP", w, h)
    if header_size in (40, 52, 56, 64, 108, 124):
        w, h = struct.unpack_from("<ii", data, 18)
        return Header("BMP", w, abs(h))  # a negative height means rows stored top-down
    raise InvalidImage(f"the BMP header is corrupt: unknown header size {header_size}")


def _read_tiff(data: bytes) -> Header:
    order = "<" if data[:2] == b"II" else ">"
    (version,) = struct.unpack_from(order + "H", data, 2)
    big = version == 43
    if big:
        (ifd,) = struct.unpack_from(order + "Q", data, 8)
        (count,) = struct.unpack_from(order + "Q", data, ifd)
        entry, first = 20, ifd + 8
    else:
        (ifd,) = struct.unpack_from(order + "I", data, 4)
        (count,) = struct.unpack_from(order + "H", data, ifd)
        entry, first = 12, ifd + 2
    if count > MAX_TIFF_TAGS:
        raise InvalidImage(f"the TIFF has {count} tags in its first directory, above {MAX_TIFF_TAGS}; re-encode it")
    found: dict[int, int] = {}
    for i in range(count):
        at = first + i * entry
        tag, kind = struct.unpack_from(order + "HH", data, at)
        if tag in (256, 257):
            value_at = at + (12 if big else 8)
            fmt = {3: "H", 4: "I", 16: "Q"}.get(kind)
            if fmt is None:
                raise InvalidImage(f"the TIFF header is corrupt: image size tag {tag} has type {kind}")
            (found[tag],) = struct.unpack_from(order + fmt, data, value_at)
    if 256 not in found or 257 not in found:
        raise InvalidImage("the TIFF header is corrupt: no image width or height")
    return Header("TIFF", found[256], found[257])


_READERS = (
    (b"\xff\xd8\xff", _read_jpeg),
    (b"\x89PNG\r\n\x1a\n", _read_png),
    (b"GIF87a", _read_gif),
    (b"GIF89a", _read_gif),
    (b"RIFF", _read_webp),
    (b"BM", _read_bmp),
    (b"II*\x00", _read_tiff),
    (b"MM\x00*", _read_tiff),
    (b"II+\x00", _read_tiff),
    (b"MM\x00+", _read_tiff),
)
