"""Model-only speed of each CPU runtime candidate, as ratios to onnxruntime FP32 taken in one run.

The candidates run in interleaved rounds on the same preprocessed gate photos (batch 1, every
core), so load from elsewhere on the machine hits them alike; the median round's images/s and the
median CPU time of this process per image are reported. The BF16 FP32 islands are the ones a
repository's build found (``--repository``), or none. Run it on a quiet machine:

    .venv/bin/python tools/bench_runtimes.py --repository ~/.cache/matteserve/repositories/u2netp-cpu --rounds 10
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from matteserve import contract
from matteserve.build import photos
from matteserve.build.repository import read_manifest
from matteserve.build.runtime_choice import Capabilities
from matteserve.build.tuning import images_per_s
from matteserve.pipeline import tensor
from matteserve.runtimes import Precision, Runtime, RuntimeSettings
from matteserve.segments import parse_ranges
from matteserve.stages import MattingRunner
from matteserve.zoo import ModelSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True, help="a CPU model repository (its ONNX and spec)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    manifest = read_manifest(args.repository)
    if manifest is None:
        raise SystemExit(f"{args.repository} is not a matteserve model repository")
    spec = ModelSpec.from_dict(manifest["spec"])
    onnx = args.repository / contract.MATTING / "1" / "model.onnx"
    threads = os.cpu_count() or 1
    islands = parse_ranges(manifest.get("runtime_choice", {}).get("fp32_nodes", ""))
    caps = Capabilities.detect()
    candidates = {
        "onnxruntime fp32": RuntimeSettings(threads=threads),
        "openvino fp32": RuntimeSettings(Runtime.OPENVINO, Precision.FP32, threads),
    }
    if caps.bf16:
        candidates["openvino bf16"] = RuntimeSettings(Runtime.OPENVINO, Precision.BF16, threads)
        if islands:
            candidates["openvino bf16 + fp32 islands"] = RuntimeSettings(
                Runtime.OPENVINO, Precision.BF16, threads, fp32_nodes=islands
            )
    inputs = [
        tensor.normalise(tensor.resize_for_model(Image.fromarray(px), spec, (1, 1)), spec)
        for px in photos.gate_photos().values()
    ]
    runners = {name: MattingRunner(onnx, spec, settings=s) for name, s in candidates.items()}
    photo = itertools.cycle(inputs)
    rates: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}  # per image
    for _ in range(args.rounds):
        for name, runner in runners.items():

            def one(runner: MattingRunner = runner, cpu: list[float] = cpu[name]) -> None:
                start = time.process_time()
                runner.run([next(photo)])
                cpu.append(time.process_time() - start)

            rates[name].append(images_per_s(one, 1, seconds=0, at_least=len(inputs)))
    per_s = {name: float(np.median(r)) for name, r in rates.items()}
    cpu_ms = {name: float(np.median(c)) * 1000 for name, c in cpu.items()}
    reference = "onnxruntime fp32"
    print(f"{spec.name}, {threads} threads, median of {args.rounds} rounds of {len(inputs)} images, CPU flags: {caps}")
    print(f"{'runtime':32} {'images/s':>9} {'x ORT':>6} {'CPU ms/img':>11} {'x ORT':>6}")
    for name in runners:
        print(
            f"{name:32} {per_s[name]:9.2f} {per_s[name] / per_s[reference]:6.2f} "
            f"{cpu_ms[name]:11.1f} {cpu_ms[reference] / cpu_ms[name]:6.2f}"
        )


if __name__ == "__main__":
    main()
