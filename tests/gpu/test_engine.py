"""The FP16 TensorRT engine: built, checked against the FP32 model on photos, served through the
ensemble by a Triton with the TensorRT backend. Skipped without a GPU and TensorRT (see conftest)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from matteserve import contract, stages
from matteserve.build import configs, onnx_prep, photos, weights
from matteserve.build.builder import build
from matteserve.build.configs import Target
from matteserve.build.gpu import engine, graph, parity, stamp
from matteserve.build.gpu.build import PhotoSets, prepare_graphs
from matteserve.options import RequestOptions
from matteserve.pipeline.decode import ImageLimits
from matteserve.zoo import get_spec

from ..conftest import free_port  # type: ignore[import-not-found]

pytestmark = pytest.mark.gpu
SPEC = get_spec("u2netp")
MAX_BATCH = 8


@pytest.fixture(scope="module")
def gpu_repository(gpu_runtime: stamp.Runtime, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(SPEC, tmp_path_factory.mktemp("gpu") / "repo", target=Target.GPU, max_batch_size=MAX_BATCH)


def test_engine_matches_the_fp32_model_and_batches_match_singles(
    gpu_runtime: stamp.Runtime, photo_arrays: dict[str, np.ndarray], tmp_path: Path
) -> None:
    prepared = onnx_prep.prepare(weights.weights_path(SPEC), SPEC, tmp_path / "prepared.onnx").path
    graphs = prepare_graphs(prepared, SPEC, PhotoSets(photo_arrays, photos.gate()), tmp_path, batch=MAX_BATCH)
    typing = engine.typing_for(gpu_runtime.tensorrt)
    options = engine.EngineOptions(320, 320, MAX_BATCH, MAX_BATCH, typing=typing, keep_fp32=graphs.keep_fp32)
    built = engine.build_engine(
        graphs.fp16 if typing is engine.Typing.STRONG else graphs.fp32, tmp_path / "m.plan", options, tmp_path / "tc"
    )
    assert (tmp_path / "tc").stat().st_size > 0, "the timing cache is persisted"
    runner = engine.EngineRunner(built.plan, options)
    try:
        pixels = parity.sample_pixels(photo_arrays, SPEC)
        report = parity.check(
            "engine", parity.reference(graph.session(prepared), SPEC), runner.run, pixels, *parity.fp16_limits()
        )
        print(report.table())
        assert report.passed, report.table()
        batch = np.stack(list(pixels.values()))
        singles = np.concatenate([runner.run(p[None]) for p in batch])
        assert np.abs(runner.run(batch) - singles).max() <= 2 / 255
    finally:
        runner.close()


def test_gpu_build_writes_a_stamped_repository_this_node_accepts(
    gpu_runtime: stamp.Runtime, gpu_repository: Path
) -> None:
    found = stamp.check_repository(gpu_repository, gpu_runtime)
    assert found is not None
    assert all(r["passed"] for r in found.parity["reports"])
    assert {r["batch"] for r in found.parity["reports"]} == {1, MAX_BATCH}
    assert found.precision == "fp16", found.build.get("fp16_fallback")
    matting = configs.from_pbtxt((gpu_repository / contract.MATTING / "config.pbtxt").read_text())
    assert dict(matting.cc_model_filenames) == {gpu_runtime.compute_capability: found.plan}
    assert matting.max_batch_size == found.options["max_batch_size"] == MAX_BATCH


@pytest.fixture(scope="module")
def triton_grpc(triton_home: Path, gpu_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    http, grpc = free_port(), free_port()
    log = (tmp_path_factory.mktemp("triton") / "triton.log").open("wb")
    cmd = [
        str(triton_home / "bin" / "tritonserver"),
        f"--model-repository={gpu_repository}",
        f"--backend-directory={triton_home / 'backends'}",
        "--backend-config=python,shm-default-byte-size=67108864",
        "--http-address=127.0.0.1",
        f"--http-port={http}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc}",
        "--allow-metrics=false",
        "--strict-readiness=true",
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(stages.__file__).parent.parent), *sys.path]))
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"Triton with the engine did not become ready; see {log.name}")
    yield f"127.0.0.1:{grpc}"
    proc.send_signal(signal.SIGINT)
    proc.wait(30)


def test_triton_serves_the_engine_through_the_ensemble(triton_grpc: str, photos: dict[str, bytes]) -> None:
    import tritonclient.grpc as grpcclient

    from matteserve.stages import MattingRunner

    client = grpcclient.InferenceServerClient(triton_grpc)
    cpu = MattingRunner(weights.weights_path(SPEC), SPEC)
    limits = ImageLimits()
    options = json.dumps({"format": "mask"}).encode()
    for name, data in photos.items():
        result = client.infer(contract.ENSEMBLE, contract.ensemble_inputs(data, options), client_timeout=60)
        served = np.asarray(Image.open(io.BytesIO(result.as_numpy(contract.RESULT)[0, 0])), dtype=np.float64)
        alpha = cpu.run([stages.preprocess(data, options, SPEC, limits)])[0]
        expected = stages.postprocess(data, options, alpha, limits)
        assert RequestOptions.from_json(options).content_type == expected.content_type
        want = np.asarray(Image.open(io.BytesIO(expected.data)), dtype=np.float64)
        assert served.shape == want.shape
        assert np.abs(served - want).mean() <= 1.0, name


def test_bench_gpu_engine_prints_images_per_second_per_batch_on_this_gpu(gpu_repository: Path) -> None:
    from typer.testing import CliRunner

    from matteserve.cli import app

    result = CliRunner().invoke(
        app, ["bench", "gpu", "engine", str(gpu_repository), "--batches", "1,8", "--seconds", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "batch   1:" in result.output
    assert f"batch   {MAX_BATCH}:" in result.output
