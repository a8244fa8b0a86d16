"""The CPU target serving the GPU's folded graph (uint8 pixels in, alpha out) through a real Triton:
the same mattes as the default repository, a quarter of the bytes between preprocess and the model."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from matteserve import contract
from matteserve.build import configs
from matteserve.build.builder import build
from matteserve.contract import Meta
from matteserve.tritonserver import TritonServer
from matteserve.zoo import get_spec

from ..conftest import TEST_MAX_BATCH, start_triton  # type: ignore[import-not-found]

Infer = Callable[..., tuple[bytes, Meta]]


@pytest.fixture(scope="module")
def folded_repository(cache_root: Path) -> Path:
    return build(
        get_spec("u2netp"),
        cache_root / "repo-cpu-folded",
        max_batch_size=TEST_MAX_BATCH,
        queue_delay_us=20_000,
        fold_input=True,
        measure_seconds=0,  # the onnxruntime FP32 reference, as the default test repository
    )


@pytest.fixture(scope="module")
def folded_triton(folded_repository: Path, cache_root: Path) -> Iterator[TritonServer]:
    server = start_triton(folded_repository, cache_root)
    yield server
    server.stop()


def infer(server: TritonServer, image: bytes) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.cfg.grpc_url)
    inputs = contract.ensemble_inputs(image, json.dumps({"format": "mask"}).encode())
    result = client.infer(contract.ENSEMBLE, inputs, client_timeout=120)
    return np.asarray(Image.open(io.BytesIO(result.as_numpy(contract.RESULT)[0, 0])), dtype=np.int16)


def test_the_folded_repository_sends_uint8_pixels_to_the_folded_graph(folded_repository: Path) -> None:
    pre = configs.from_pbtxt((folded_repository / contract.PREPROCESS / "config.pbtxt").read_text())
    matting = configs.from_pbtxt((folded_repository / contract.MATTING / "config.pbtxt").read_text())
    assert pre.output[0].data_type == matting.input[0].data_type == configs.model_config_pb2.TYPE_UINT8
    assert list(matting.input[0].dims) == [320, 320, 3]
    manifest = json.loads((folded_repository / "matteserve-build.json").read_text())
    assert manifest["fold_parity"]["passed"]


def test_folded_and_default_repositories_serve_the_same_mattes_in_batches(
    folded_triton: TritonServer, triton_infer: Infer, photos: dict[str, bytes]
) -> None:
    names = list(photos) * 2  # concurrent requests, so the dynamic batcher groups them
    with ThreadPoolExecutor(len(names)) as pool:
        folded = list(pool.map(lambda n: infer(folded_triton, photos[n]), names))
    for name, got in zip(names, folded, strict=True):
        data, _ = triton_infer(photos[name], {"format": "mask"})
        want = np.asarray(Image.open(io.BytesIO(data)), dtype=np.int16)
        diff = np.abs(got - want)
        # FP32 arithmetic in another order: a few uint8 roundings flip, nothing more.
        assert diff.mean() <= 0.05, name
        assert diff.max() <= 2, name
