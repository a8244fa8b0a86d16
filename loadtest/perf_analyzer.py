"""Triton's own load generator, ``perf_analyzer``, as an independent check on :mod:`.runner`.

It ships as a binary inside the ``tritonclient==2.51.0`` wheel (newer wheels dropped it). The wheel is
downloaded with ``pip download --no-deps`` and only the binary is extracted, so the project's newer
tritonclient is never replaced. The binary links ``libcudart.so.12`` even on a CPU machine: that
comes from the ``nvidia-cuda-runtime-cu12`` wheel installed with ``pip install --target`` into a
folder beside the binary, reached only through the binary's own LD_LIBRARY_PATH, so no CUDA library
enters the project's environment (where on a GPU node it could shadow the one TensorRT needs). It
also needs Debian's ``libb64-0d`` (``make system-deps``).

Install: ``make perf-analyzer`` or ``python -m matteserve.loadtest.perf_analyzer``.
"""

from __future__ import annotations

import base64
import csv
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matteserve import contract
from matteserve.errors import MatteserveError
from matteserve.paths import cache_dir

logger = logging.getLogger(__name__)

WHEEL = "tritonclient==2.51.0"
MEMBER = "tritonclient-2.51.0.data/data/bin/perf_analyzer"
CUDA_RUNTIME = "nvidia-cuda-runtime-cu12"


class PerfAnalyzerMissing(MatteserveError):
    """perf_analyzer or a library it links is not installed here."""


def home() -> Path:
    return cache_dir() / "perf_analyzer" / "2.51.0"


def binary_path() -> Path:
    return home() / "perf_analyzer"


def cuda_lib_dir() -> Path:
    return home() / "cuda-runtime" / "nvidia" / "cuda_runtime" / "lib"


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PerfAnalyzerMissing(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")


def install() -> Path:
    """Put perf_analyzer and its CUDA runtime library in the cache; returns the binary."""
    target = binary_path()
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            _pip("download", "--no-deps", "-d", tmp, WHEEL)
            wheel = next(Path(tmp).glob("tritonclient-2.51.0-*.whl"))
            partial = target.with_suffix(".partial")
            with zipfile.ZipFile(wheel) as zf, zf.open(MEMBER) as src, partial.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.chmod(0o755)
            partial.replace(target)
    if not (cuda_lib_dir() / "libcudart.so.12").is_file():
        _pip("install", "--no-deps", "--target", str(home() / "cuda-runtime"), CUDA_RUNTIME)
    logger.info("perf_analyzer installed at %s", target)
    return target


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(cuda_lib_dir()), env.get("LD_LIBRARY_PATH")]))
    return env


def check() -> Path:
    """The binary, runnable; raises :class:`PerfAnalyzerMissing` saying what to install otherwise."""
    binary = binary_path()
    if not binary.is_file():
        raise PerfAnalyzerMissing(f"perf_analyzer is not installed at {binary}: run `make perf-analyzer`")
    proc = subprocess.run([str(binary), "--version"], capture_output=True, text=True, env=environment(), check=False)
    if "error while loading shared libraries" in proc.stderr:
        raise PerfAnalyzerMissing(
            f"perf_analyzer cannot start: {proc.stderr.strip()} (libb64.so.0d: apt-get install libb64-0d; "
            "libcudart.so.12: run `make perf-analyzer`)"
        )
    return binary


def bytes_element(value: bytes) -> str:
    """One BYTES tensor element as perf_analyzer wants it in ``--input-data``: the raw serialised
    tensor, i.e. a 4-byte little-endian length before the bytes, all base64-encoded."""
    return base64.b64encode(struct.pack("<I", len(value)) + value).decode("ascii")


def decode_bytes_element(b64: str) -> list[bytes]:
    """The inverse of :func:`bytes_element` for a serialised BYTES tensor of any number of elements."""
    raw, out, pos = base64.b64decode(b64), [], 0
    while pos < len(raw):
        (length,) = struct.unpack_from("<I", raw, pos)
        out.append(raw[pos + 4 : pos + 4 + length])
        pos += 4 + length
    if pos != len(raw):
        raise ValueError("the serialised BYTES tensor is truncated")
    return out


def input_data(images: Sequence[bytes], options: bytes) -> dict[str, object]:
    """perf_analyzer's ``--input-data`` document: one step per image, each with the options. Shapes
    leave out the batch dimension (perf_analyzer adds it with -b)."""
    return {
        "data": [
            {
                contract.IMAGE: {"b64": bytes_element(image), "shape": [1]},
                contract.OPTIONS: {"b64": bytes_element(options), "shape": [1]},
            }
            for image in images
        ]
    }


@dataclass(frozen=True)
class PerfAnalyzerResult:
    concurrency: int
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    command: list[str]


def run(
    grpc_url: str,
    images: Sequence[bytes],
    options: bytes,
    concurrency: int,
    work_dir: Path,
    measurement_ms: int = 5000,
    timeout_s: float = 300.0,
    requests_per_window: int | None = None,
) -> PerfAnalyzerResult:
    """Measure the ensemble at one concurrency over gRPC with the same inputs.

    A throughput counted in a time window is quantised by one request: at 2 requests/s a 3 s window
    holds about 6, and one more or less moves the figure by 17%. With ``requests_per_window`` each
    window instead closes after that many responses, which a slow CPU service needs."""
    binary = check()
    work_dir.mkdir(parents=True, exist_ok=True)
    data_file = work_dir / "perf_analyzer_input.json"
    data_file.write_text(json.dumps(input_data(images, options)))
    csv_file = work_dir / f"perf_analyzer_c{concurrency}.csv"
    cmd = [
        str(binary),
        "-m",
        contract.ENSEMBLE,
        "-i",
        "grpc",
        "-u",
        grpc_url,
        "--concurrency-range",
        f"{concurrency}:{concurrency}",
        "--input-data",
        str(data_file),
        *(
            ["--measurement-mode", "count_windows", "--measurement-request-count", str(requests_per_window)]
            if requests_per_window
            else ["--measurement-interval", str(measurement_ms)]
        ),
        # perf_analyzer gives up unless three consecutive windows lie within this much of their mean; a
        # busy 2-core machine often misses the default 10%, and failing would leave no figure at all.
        # The figure is the mean of those three windows either way; agreement is judged against ours.
        "--stability-percentage",
        "50",
        "--max-trials",
        "10",
        "-f",
        str(csv_file),
    ]
    logger.info("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=environment(), timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as e:
        raise MatteserveError(f"perf_analyzer did not finish within {timeout_s:.0f} s") from e
    (work_dir / f"perf_analyzer_c{concurrency}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not csv_file.is_file():
        raise MatteserveError(f"perf_analyzer failed ({proc.returncode}): {(proc.stdout + proc.stderr).strip()[-800:]}")
    return parse_csv(csv_file, cmd)


def parse_csv(path: Path, cmd: list[str]) -> PerfAnalyzerResult:
    with path.open() as f:
        row = next(csv.DictReader(f))
    return PerfAnalyzerResult(
        concurrency=int(row["Concurrency"]),
        throughput_rps=float(row["Inferences/Second"]),
        p50_ms=float(row["p50 latency"]) / 1000.0,
        p99_ms=float(row["p99 latency"]) / 1000.0,
        command=cmd,
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(install())
    print(check())
