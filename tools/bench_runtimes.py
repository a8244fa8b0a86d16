"""Model-only speed of each CPU runtime candidate, as ratios to onnxruntime FP32 taken in one run.

The candidates run in interleaved rounds on the same preprocessed gate photos (batch 1, every
core), so load from elsewhere on the machine hits them alike; wall time and this process's CPU time
are both reported. The BF16 FP32 islands are the ones a repository's build found (``--repository``),
or none. Run it on a quiet machine:

    .venv/bin/python tools/bench_runtimes.py --repository ~/.cache/matteserve/repositories/u2netp-cpu --rounds 10
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from PIL import Image

from matteserve import contract
from matteserve.build import photos
from matteserve.build.repository import read_manifest
from matteserve.build.runtime_choice import Capabilities
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
    wall = dict.fromkeys(runners, 0.0)
    cpu = dict.fromkeys(runners, 0.0)
    for runner in runners.values():
        runner.run(inputs[:1])
    for _ in range(args.rounds):
        for name, runner in runners.items():
            w, c = time.perf_counter(), time.process_time()
            for x in inputs:
                runner.run([x])
            wall[name] += time.perf_counter() - w
            cpu[name] += time.process_time() - c
    images = args.rounds * len(inputs)
    reference = "onnxruntime fp32"
    print(f"{spec.name}, {threads} threads, {images} images each, CPU flags: {caps}")
    print(f"{'runtime':32} {'images/s':>9} {'x ORT':>6} {'CPU ms/img':>11} {'x ORT':>6}")
    for name in runners:
        print(
            f"{name:32} {images / wall[name]:9.2f} {wall[reference] / wall[name]:6.2f} "
            f"{cpu[name] / images * 1000:11.1f} {cpu[reference] / cpu[name]:6.2f}"
        )


if __name__ == "__main__":
    main()
