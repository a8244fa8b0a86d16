"""``matteserve bench codecs``: what the codec choices in ``matteserve/pipeline`` rest on. CPU time per
image is the median of repeats in ``time.process_time`` (so that library threads count), mean over the
photo set, with u2netp's own mattes."""

from __future__ import annotations

import io
import statistics
from collections.abc import Callable, Sequence
from functools import partial

import fpng
import numpy as np
import simplejpeg
from PIL import Image

from matteserve import stages
from matteserve.build.weights import weights_path
from matteserve.loadtest.images import PHOTOS, photo_jpeg
from matteserve.loadtest.stack import median_core_ms
from matteserve.pipeline import decode, output
from matteserve.pipeline.decode import ImageLimits
from matteserve.zoo import get_spec

LIMITS = ImageLimits()


def core_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm: first calls load codecs and fill caches
    return median_core_ms(fn, repeats)


def pillow_png(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def png_encoders() -> dict[str, Callable[[np.ndarray], bytes]]:
    out: dict[str, Callable[[np.ndarray], bytes]] = {"fpng": fpng.from_ndarray, "pillow level 1": pillow_png}
    try:
        import imagecodecs

        out["imagecodecs png level 1"] = lambda a: bytes(imagecodecs.png_encode(a, level=1))
        out["imagecodecs spng level 1"] = lambda a: bytes(imagecodecs.spng_encode(a, level=1))
    except ImportError:
        pass
    try:
        import pyvips

        def vips_png(a: np.ndarray) -> bytes:
            image = pyvips.Image.new_from_memory(a.data, a.shape[1], a.shape[0], 4, "uchar")
            return bytes(image.pngsave_buffer(compression=1, filter="none"))

        out["libvips png (libspng) level 1"] = vips_png
    except ImportError:
        pass
    return out


def measure_codecs(sizes: Sequence[int], repeats: int) -> None:
    """Print each candidate's CPU milliseconds per image (and the PNGs' size) at each photo size."""
    spec = get_spec("u2netp")
    runner = stages.MattingRunner(weights_path(spec), spec, threads=1)
    for size in sizes:
        photos = [photo_jpeg(name, size) for name in PHOTOS]
        alphas = [runner.run([stages.preprocess(d, b"", spec, LIMITS)])[0] for d in photos]
        kept, cleared = [], []
        for data, alpha in zip(photos, alphas, strict=True):
            rgba = decode.decode_rgba(decode.open_image(data, LIMITS), data)
            matte = output.upsample_alpha(alpha, (size, size))
            k, c = rgba.copy(), rgba.copy()
            output.put_matte(k, matte, clear=False)
            output.put_matte(c, matte, clear=True)
            kept.append(k)
            cleared.append(c)
        print(f"== {size} px: RGBA PNG encoders (colour kept / cleared under alpha 0)")
        for name, encode in png_encoders().items():
            for label, arrays in (("kept", kept), ("cleared", cleared)):
                ms = statistics.mean(core_ms(partial(encode, a), repeats) for a in arrays)
                mb = statistics.mean(len(encode(a)) for a in arrays) / 1e6
                print(f"  {name:32} {label:8} {ms:8.2f} core-ms {mb:7.3f} MB", flush=True)
        print(f"== {size} px: decode and upsample")
        rows = {
            "JPEG full decode, Pillow": lambda d: decode.decode_with_alpha(decode.open_image(d, LIMITS)),
            "JPEG full decode, simplejpeg RGBA": lambda d: simplejpeg.decode_jpeg(d, colorspace="RGBA"),
            "JPEG reduced decode, Pillow draft": lambda d: decode.decode_rgb(decode.open_image(d, LIMITS), (480, 480)),
            "JPEG reduced decode, simplejpeg": lambda d: simplejpeg.decode_jpeg(d, min_width=480, min_height=480),
            "preprocess (decode, LANCZOS, normalise)": lambda d: stages.preprocess(d, b"", spec, LIMITS),
        }
        for name, fn in rows.items():
            ms = statistics.mean(core_ms(partial(fn, d), repeats) for d in photos)
            print(f"  {name:42} {ms:8.2f} core-ms", flush=True)
        ms = statistics.mean(core_ms(partial(output.upsample_alpha, a, (size, size)), repeats) for a in alphas)
        print(f"  {'alpha upsample 320 -> full, Pillow bilinear':42} {ms:8.2f} core-ms")
