"""Two processes building into one repository folder (pods on one shared volume) take turns: every
swap is whole, none fails, and nothing half-written or left over remains."""

from __future__ import annotations

import errno
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from matteserve import contract
from matteserve.build import locks
from matteserve.build.repository import read_manifest

from .test_onnx_prep import tiny_model  # type: ignore[import-not-found]

BUILDS_EACH = 15

BUILDER = textwrap.dedent(
    """
    import logging
    import sys
    from pathlib import Path
    from matteserve.build.builder import build
    from matteserve.zoo import FixedSize, ModelSpec, Scaling

    logging.basicConfig(level=logging.INFO)
    spec = ModelSpec("tiny", FixedSize(8, 8), (0.5,) * 3, (0.5,) * 3, Scaling.UNIT)
    onnx, out, count = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    for _ in range(count):
        build(spec, out, onnx=onnx, max_batch_size=2, cores=2, measure_seconds=0)
    """
)


def start_builder(onnx: Path, out: Path, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", BUILDER, str(onnx), str(out), str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_building_into_one_folder_never_clobber_each_other(tmp_path: Path) -> None:
    onnx, out = tiny_model(tmp_path), tmp_path / "shared" / "tiny-cpu"
    builders = [start_builder(onnx, out, BUILDS_EACH) for _ in range(2)]
    for builder in builders:
        _, stderr = builder.communicate(timeout=300)
        assert builder.returncode == 0, stderr[-2000:]
    manifest = read_manifest(out)
    assert manifest is not None
    assert manifest["model"] == "tiny"
    for model in (contract.PREPROCESS, contract.MATTING, contract.POSTPROCESS, contract.ENSEMBLE):
        assert (out / model / "config.pbtxt").is_file(), model
    leftovers = sorted(p.name for p in out.parent.iterdir() if p != out and p != locks.lock_path(out))
    assert leftovers == [], "staging folders or replaced repositories left behind"


def test_a_swap_waits_while_another_process_holds_the_repository_lock(tmp_path: Path) -> None:
    onnx, out = tiny_model(tmp_path), tmp_path / "shared" / "tiny-cpu"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from matteserve.build import locks\n"
            "with locks.exclusive(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(3)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    builder = start_builder(onnx, out, 1)
    _, stderr = builder.communicate(timeout=120)
    holder.wait(timeout=30)
    assert builder.returncode == 0, stderr[-2000:]
    assert holder.returncode == 0
    assert read_manifest(out) is not None
    assert "being written by another process" in stderr, "the build waited for the lock, and says so"


def test_a_read_only_store_is_read_without_a_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """KServe mounts the engine store read-only: no lock file can be made there, and none is needed."""

    failure = [errno.EROFS]

    def cannot_open(self: Path, *args: object, **kwargs: object) -> None:
        raise OSError(failure[0], "cannot open", str(self))

    monkeypatch.setattr(Path, "open", cannot_open)
    entered = []
    with locks.exclusive(tmp_path / "engines" / "u2netp" / "key"):
        entered.append(True)
    assert entered == [True]
    failure[0] = errno.ENOSPC  # a full disk is not a read-only store
    with pytest.raises(OSError, match="cannot open"), locks.exclusive(tmp_path / "other"):
        pass
