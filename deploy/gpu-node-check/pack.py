#!/usr/bin/env python3
"""Make the bundle ``check.py`` runs from on a GPU host with no network (see README.md).

Runs where matteserve is installed and pip reaches an index:

    python deploy/gpu-node-check/pack.py --out gpu-node-check [--python 3.11]

It downloads the wheels for the host's Python (Linux x86-64, glibc >= 2.35 as the Triton wheel
needs), builds matteserve's own wheel, writes the stand-in repository with
``matteserve build --model null`` and photo-like JPEGs, and refuses a bundle whose wheels exceed
:data:`WHEEL_BUDGET_BYTES`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# The host must run nvidia-pytriton 0.7.0 (tagged manylinux_2_35); pip takes the older manylinux
# tags the other wheels carry only when each is named.
PLATFORMS = (*(f"manylinux_2_{v}_x86_64" for v in (35, 34, 28, 27, 17)), "manylinux2014_x86_64")
# The Triton wheel is 55 MB; the host has numpy. What the python pre/post models import besides
# numpy and the standard library (matteserve.pipeline, matteserve.stages), with their own imports:
WHEELS = ("nvidia-pytriton==0.7.0", "pillow", "simplejpeg", "fpng", "lazy-loader")  # fpng imports lazy_loader
# About 60 MB: the Triton wheel alone is 55.4 MB; with Pillow (7.1 MB) the bundle measured 63.2 MB.
# OpenCV (50 MB) does not fit: without it the matte is enlarged by Pillow, which costs 3.4 core-ms
# more per 1024 px image and 7.5 more at 2048 px, so the check's postprocess figures err high.
WHEEL_BUDGET_BYTES = 64 * 1000 * 1000
SIZES = (1024, 2048)


def download_command(python: str, folder: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        f"--python-version={python}",
        "--implementation=cp",
        *(f"--platform={p}" for p in PLATFORMS),
        "--dest",
        str(folder),
        *WHEELS,
    ]


def own_wheel_command(folder: Path, source: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(folder), str(source)]


def source_copy(work: Path) -> Path:
    """The project without its environments: setuptools writes ``build/lib`` into the tree it
    builds, and this project's ``build/`` is a package folder."""
    ignore = shutil.ignore_patterns(".git", ".venv", "*.egg-info", "__pycache__", ".*cache", ".mypy_tree", "bench-*")
    return Path(shutil.copytree(ROOT, work / "src", ignore=ignore))


def null_repository_command(out: Path) -> list[str]:
    """The stand-in matting step (matteserve build --model null), batch 1 as a GPU node's pre/post."""
    return [
        sys.executable,
        "-m",
        "matteserve.cli",
        "build",
        "--model",
        "null",
        "--max-batch-size",
        "1",
        "--out",
        str(out),
    ]


def check_budget(wheels: list[Path], budget: int = WHEEL_BUDGET_BYTES) -> int:
    total = sum(w.stat().st_size for w in wheels)
    if total > budget:
        listing = ", ".join(f"{w.name} {w.stat().st_size / 1e6:.1f} MB" for w in wheels)
        raise SystemExit(f"the wheels take {total / 1e6:.1f} MB, over the {budget / 1e6:.0f} MB budget: {listing}")
    return total


def write_photos(folder: Path, sizes: tuple[int, ...] = SIZES) -> list[Path]:
    from matteserve.loadtest.images import photo_jpeg

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for size in sizes:
        path = folder / f"astronaut-{size}.jpg"
        path.write_bytes(photo_jpeg("astronaut", size))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--python", default=f"{sys.version_info.major}.{sys.version_info.minor}")
    args = parser.parse_args(argv)
    wheels = args.out / "wheels"
    shutil.rmtree(args.out, ignore_errors=True)
    wheels.mkdir(parents=True)
    subprocess.run(download_command(args.python, wheels), check=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(own_wheel_command(wheels, source_copy(Path(tmp))), check=True)
    subprocess.run(null_repository_command(args.out / "repository"), check=True)
    write_photos(args.out / "photos")
    shutil.copy2(HERE / "check.py", args.out / "check.py")
    total = check_budget(sorted(wheels.glob("*.whl")))
    print(f"bundle {args.out}: wheels {total / 1e6:.1f} MB; copy it to the GPU host and run python3 check.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
