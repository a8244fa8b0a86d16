"""Fuzzing the decode path: valid images of every allowed format with mutated headers, lengths and
chunks. Whatever the bytes, the answer is an image or InvalidImage, within bounded time and memory.

Deterministic (derandomized, no example database), so CI sees the same cases every run.
"""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from matteserve.errors import InvalidImage
from matteserve.pipeline.decode import ImageLimits, check_header, decode_rgb, decode_rgba, open_image, oriented_size

# Small, so that a mutated header that still passes decodes in milliseconds.
LIMITS = ImageLimits(max_pixels=1_000_000)
CPU_SECONDS_PER_CASE = 0.5
HEADER_BYTES_PER_CASE = 256 * 1024  # Python memory the header check may take beyond the input


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    png = _encode(img.convert("RGBA"), "PNG", exif=exif.tobytes())
    text = struct.pack(">I", 5) + b"tEXtk\x00val"
    text += struct.pack(">I", zlib.crc32(b"tEXtk\x00val"))
    frames = [img, img.rotate(90)]
    return {
        "jpeg": _encode(img, "JPEG", exif=exif.tobytes(), quality=80),
        "jpeg-progressive": _encode(img.convert("L"), "JPEG", progressive=True),
        "png": png[:33] + text + png[33:],
        "png-palette": _encode(img.convert("P"), "PNG", transparency=0),
        "webp": _encode(img, "WEBP", quality=60, exif=exif.tobytes()),
        "webp-lossless": _encode(img.convert("RGBA"), "WEBP", lossless=True),
        "bmp": _encode(img, "BMP"),
        "tiff": _encode(img, "TIFF", compression="tiff_lzw", exif=exif.tobytes()),
        "gif": _encode(img.convert("P"), "GIF", save_all=True, append_images=[f.convert("P") for f in frames]),
    }


SEEDS = _seeds()

# Values that break parsers: zero, one, sign bits, all ones, and lengths past the end.
_EDGE = st.sampled_from([b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00", b"\xff\xff", b"\xff" * 4, b"\x00\x01"])
_BYTES = st.one_of(_EDGE, st.binary(min_size=1, max_size=8))
_WHERE = st.floats(0, 1)  # a fraction of the length, so a mutation lands in any file
_HEADER = st.integers(0, 96)  # most parsers read their sizes from the first ~100 bytes


def _at(data: bytearray, fraction: float) -> int:
    return min(int(fraction * len(data)), len(data))


_MUTATIONS = st.one_of(
    st.tuples(st.just("overwrite"), st.one_of(_HEADER, _WHERE), _BYTES),
    st.tuples(st.just("insert"), _WHERE, _BYTES),
    st.tuples(st.just("delete"), _WHERE, st.integers(1, 64)),
    st.tuples(st.just("truncate"), _WHERE, st.just(0)),
    st.tuples(st.just("repeat"), _WHERE, st.integers(1, 200)),  # a run of chunks/segments copied
)


def mutate(seed: bytes, mutations: list[tuple[str, object, object]]) -> bytes:
    data = bytearray(seed)
    for kind, where, what in mutations:
        at = where if isinstance(where, int) else _at(data, float(where))  # type: ignore[arg-type]
        at = min(at, len(data))
        if kind == "overwrite":
            data[at : at + len(what)] = what  # type: ignore[arg-type]
        elif kind == "insert":
            data[at:at] = what  # type: ignore[index]
        elif kind == "delete":
            del data[at : at + int(what)]  # type: ignore[call-overload]
        elif kind == "truncate":
            del data[max(at, 1) :]
        elif kind == "repeat":
            piece = bytes(data[at : at + 24])
            data[at:at] = piece * int(what)  # type: ignore[call-overload]
    return bytes(data)


def check_bounded(data: bytes) -> None:
    """An image within LIMITS whose decode has the size the header said, or InvalidImage; never
    another exception, never more than the bounds."""
    start = time.thread_time()
    tracemalloc.start()
    try:
        check_header(data, LIMITS)
    except InvalidImage:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < HEADER_BYTES_PER_CASE, f"the header check took {peak} bytes"
    try:
        img = open_image(data, LIMITS)
        width, height = oriented_size(img)
        if img.format in ("PNG", "GIF", "WEBP"):
            assert decode_rgba(img, data).shape[:2] == (height, width)
        else:
            assert decode_rgb(img).size == (width, height)
    except InvalidImage:
        pass
    assert time.thread_time() - start < CPU_SECONDS_PER_CASE


FUZZ = settings(
    max_examples=120,
    derandomize=True,
    database=None,
    deadline=None,  # CPU time is bounded inside, wall time is noise on a shared machine
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("seed", SEEDS.values(), ids=SEEDS.keys())
def test_every_seed_image_decodes_within_the_bounds(seed: bytes) -> None:
    check_bounded(seed)
    assert open_image(seed, LIMITS)  # a seed is valid: the fuzz starts from real files


@pytest.mark.parametrize("name", SEEDS.keys())
@FUZZ
@given(mutations=st.lists(_MUTATIONS, min_size=1, max_size=6))
def test_mutated_images_decode_or_are_refused_within_bounds(name: str, mutations: list) -> None:
    check_bounded(mutate(SEEDS[name], mutations))
