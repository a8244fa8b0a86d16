"""The stand-in matting step (`build --model null`): served through the real ensemble, refused by
`serve` unless asked for explicitly."""

from __future__ import annotations

import io
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image

from matteserve import contract, stand_in
from matteserve.build.builder import build
from matteserve.build.repository import read_manifest
from matteserve.pipeline import output
from matteserve.zoo import get_spec

from ..conftest import wait_for_line  # type: ignore[import-not-found]

Serve = Callable[..., tuple[subprocess.Popen[str], int]]


@pytest.fixture(scope="module")
def stand_in_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(get_spec(stand_in.MODEL), tmp_path_factory.mktemp("stand-in") / "repo")


def test_the_stand_in_repository_has_no_model_file_and_says_what_it_is(stand_in_repository: Path) -> None:
    manifest = read_manifest(stand_in_repository)
    assert manifest is not None
    assert manifest["stand_in"] is True
    assert not list((stand_in_repository / contract.MATTING / "1").glob("*.onnx"))
    matting = (stand_in_repository / contract.MATTING / "config.pbtxt").read_text()
    assert 'string_value: "stand-in"' in matting
    assert "TYPE_UINT8" in matting.split("output")[0]  # uint8 pixels in, as a GPU engine takes them


def test_serve_refuses_the_stand_in_without_the_explicit_flag(stand_in_repository: Path, serve: Serve) -> None:
    proc, _ = serve(stand_in_repository)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "STAND-IN" in out
    assert "--allow-stand-in" in out


def test_the_stand_in_serves_its_fixed_matte_at_every_images_size(
    stand_in_repository: Path, make_photo: Callable[..., bytes], serve: Serve
) -> None:
    proc, grpc_port = serve(stand_in_repository, "--allow-stand-in")
    wait_for_line(proc, "Triton ready", timeout=120)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")

    def infer(image: bytes, options: bytes) -> tuple[bytes, contract.Meta]:
        inputs = contract.ensemble_inputs(image, options)
        return contract.ensemble_result(client.infer(contract.ENSEMBLE, inputs, client_timeout=60))

    raw, meta = infer(make_photo(640, 480), b'{"format": "raw"}')
    assert (meta.width, meta.height) == (640, 480)
    expected = output.upsample_alpha(stand_in.fixed_matte(320, 320), (640, 480))
    np.testing.assert_array_equal(np.frombuffer(raw, np.uint8).reshape(480, 640), expected)
    png, _ = infer(make_photo(300, 200, "coffee"), b'{"format": "png"}')
    cutout = Image.open(io.BytesIO(png))
    assert (cutout.mode, cutout.size) == ("RGBA", (300, 200))
    alpha = np.asarray(cutout)[:, :, 3]
    assert alpha[100, 150] == 255  # the ellipse's centre
    assert alpha[0, 0] == 0  # a corner
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
