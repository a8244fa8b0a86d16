"""Runs INSIDE the isolated rembg venv (see :mod:`.baseline`), never in matteserve's environment.

Times the in-process way most people remove backgrounds: ``rembg.remove(jpeg_bytes, session=...)``
returning an RGBA PNG, one image after another, the session made once. Prints one JSON object.
Standard library and rembg only: matteserve is not importable here.
"""

import argparse
import hashlib
import json
import time
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--max-images", type=int, default=100_000)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--model", default="u2netp")
    args = parser.parse_args()

    import rembg
    from rembg import new_session, remove
    from rembg.session_factory import _resolve_model_path

    session = new_session(args.model)
    data = [p.read_bytes() for p in args.images]
    for i in range(args.warmup):
        remove(data[i % len(data)], session=session)
    done, start = 0, time.perf_counter()
    while done < args.max_images and time.perf_counter() - start < args.seconds:
        out = remove(data[done % len(data)], session=session)
        if not (isinstance(out, bytes) and out.startswith(PNG_SIGNATURE)):
            raise SystemExit("rembg.remove did not return a PNG")
        done += 1
    elapsed = time.perf_counter() - start
    weights = _resolve_model_path(args.model)
    print(
        json.dumps(
            {
                "images": done,
                "seconds": elapsed,
                "images_per_s": done / elapsed,
                "rembg_version": rembg.__version__,
                "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
            }
        )
    )


if __name__ == "__main__":
    main()
