"""Core benchmark (issue 2): served throughput against the model-only ceiling, and pre+post cost.

In ONE run on the same images and cores it measures:
  * model only: the prepared ONNX in onnxruntime at the served max batch size (the ceiling);
  * end to end: the ``remove_background`` ensemble on a real Triton, closed loop, RGBA PNG out;
  * core-milliseconds of preprocess + postprocess per image (CPU time of the stage functions).
and prints the ratios. Run it on a quiet machine:

    .venv/bin/python tools/bench_core.py --seconds 30
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from matteserve import contract, stages
from matteserve.build.builder import build
from matteserve.build.repository import read_manifest
from matteserve.loadtest.images import PHOTOS, photo_jpeg
from matteserve.options import RequestOptions
from matteserve.pipeline.decode import ImageLimits
from matteserve.tritonserver import TritonConfig, TritonServer
from matteserve.zoo import get_spec


def photos(size: int) -> list[bytes]:
    """Real photos (scikit-image), centre-cropped to size x size JPEGs, as the load test uses."""
    return [photo_jpeg(name, size) for name in PHOTOS]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def model_only(onnx: Path, batch: int, seconds: float) -> float:
    spec = get_spec("u2netp")
    runner = stages.MattingRunner(onnx, spec)
    inputs = [stages.preprocess(d, b"", spec, ImageLimits()) for d in photos(512)]
    batch_inputs = [inputs[i % len(inputs)] for i in range(batch)]
    runner.run(batch_inputs)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        runner.run(batch_inputs)
        done += batch
    return done / (time.perf_counter() - start)


def core_ms(images: list[bytes], onnx: Path, repeats: int = 5) -> tuple[float, float]:
    """CPU milliseconds of preprocess and of postprocess (PNG) per image, single-threaded."""
    spec, limits = get_spec("u2netp"), ImageLimits()
    runner = stages.MattingRunner(onnx, spec, threads=1)
    alphas = [runner.run([stages.preprocess(d, b"", spec, limits)])[0] for d in images]
    options = RequestOptions().to_json()
    pre = post = 0.0
    for _ in range(repeats):
        for data, alpha in zip(images, alphas, strict=True):
            t0 = time.process_time()
            stages.preprocess(data, b"", spec, limits)
            t1 = time.process_time()
            stages.postprocess(data, options, alpha, limits)
            t2 = time.process_time()
            pre, post = pre + t1 - t0, post + t2 - t1
    n = repeats * len(images)
    return pre / n * 1000, post / n * 1000


def end_to_end(url: str, images: list[bytes], concurrency: int, seconds: float) -> float:
    options = RequestOptions().to_json()
    done = [0] * concurrency
    stop = time.perf_counter() + seconds

    def worker(i: int) -> None:
        client = grpcclient.InferenceServerClient(url)
        k = i
        while time.perf_counter() < stop:
            inputs = []
            for name, value in ((contract.IMAGE, images[k % len(images)]), (contract.OPTIONS, options)):
                tensor = grpcclient.InferInput(name, [1, 1], "BYTES")
                tensor.set_data_from_numpy(np.array([[value]], dtype=np.object_))
                inputs.append(tensor)
            client.infer(contract.ENSEMBLE, inputs, client_timeout=120)
            done[i] += 1
            k += concurrency

    # Warm-up outside the timed window: every model instance has loaded its session by now.
    worker_threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    start = time.perf_counter()
    for t in worker_threads:
        t.start()
    for t in worker_threads:
        t.join()
    return sum(done) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="measurement time per figure")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight end to end")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        repo = build(get_spec("u2netp"), Path(tmp) / "repo")  # max batch measured on this machine
        manifest = read_manifest(repo) or {}
        batch = int(manifest["max_batch_size"])
        onnx = repo / contract.MATTING / "1" / "model.onnx"
        cfg = TritonConfig(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
        results: dict[str, object] = {"max_batch_size": batch, "batch_measurements": manifest["batch_measurements"]}
        with TritonServer(cfg, log_path=Path(tmp) / "triton.log"):
            for size in (1024, 2048):
                images = photos(size)
                end_to_end(cfg.grpc_url, images, args.concurrency, 3.0)  # warm-up
                served = end_to_end(cfg.grpc_url, images, args.concurrency, args.seconds)
                ceiling = model_only(onnx, batch, args.seconds)
                pre_ms, post_ms = core_ms(images, onnx)
                results[str(size)] = {
                    "model_only_images_per_s": round(ceiling, 2),
                    "served_images_per_s": round(served, 2),
                    "served_over_model_only": round(served / ceiling, 3),
                    "preprocess_core_ms": round(pre_ms, 2),
                    "postprocess_core_ms": round(post_ms, 2),
                }
                print(
                    f"{size} px JPEG -> RGBA PNG: served {served:.2f} img/s, model only {ceiling:.2f} img/s "
                    f"(batch {batch}) -> {served / ceiling:.0%} of the ceiling; "
                    f"pre {pre_ms:.1f} + post {post_ms:.1f} = {pre_ms + post_ms:.1f} core-ms/image",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
