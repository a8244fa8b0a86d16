"""Engine stamps: a repository's engines are served only on the GPU and TensorRT they were built for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from matteserve import contract
from matteserve.build import repository
from matteserve.build.gpu import stamp
from matteserve.build.gpu.stamp import EngineMismatch, EngineStamp, Runtime
from matteserve.errors import ModelError

H100 = Runtime("10.3.0", "9.0")


def fake_repository(tmp_path: Path, *engines: tuple[str, str], options: dict[str, object] | None = None) -> Path:
    """A repository folder with a (fake) plan and its stamp per (TensorRT, compute capability)."""
    folder = tmp_path / "repo" / contract.MATTING / "1"
    folder.mkdir(parents=True)
    for version, cc in engines:
        name = stamp.plan_filename(cc)
        (folder / name).write_bytes(b"plan")
        EngineStamp(name, version, cc, "src", "graph", options or {"max_batch_size": 32}).write(folder)
    write_manifest(tmp_path / "repo", "gpu")
    return tmp_path / "repo"


def write_manifest(repo: Path, target: str) -> None:
    manifest = {"target": target, "adapters_sha256": repository.adapters_digest()}
    (repo / repository.MANIFEST).write_text(json.dumps(manifest))


def test_the_engine_built_for_this_gpu_and_tensorrt_is_chosen(tmp_path: Path) -> None:
    repo = fake_repository(tmp_path, ("10.3.0.26", "8.6"), ("10.3.0.26", "9.0"))
    assert stamp.check_repository(repo, H100).plan == "model.sm90.plan"  # type: ignore[union-attr]


def test_another_tensorrt_version_is_refused_with_the_rebuild_command(tmp_path: Path) -> None:
    repo = fake_repository(tmp_path, ("10.1.0", "9.0"))
    with pytest.raises(EngineMismatch, match=r"TensorRT 10\.3\.0.*matteserve build --target gpu --if-stale"):
        stamp.check_repository(repo, H100)


def test_another_gpu_architecture_is_refused(tmp_path: Path) -> None:
    repo = fake_repository(tmp_path, ("10.3.0", "8.9"))
    with pytest.raises(EngineMismatch, match=r"compute capability 9\.0.*sm89\.plan: TensorRT 10\.3\.0"):
        stamp.check_repository(repo, H100)


def test_a_stamped_but_missing_plan_is_refused(tmp_path: Path) -> None:
    repo = fake_repository(tmp_path, ("10.3.0", "9.0"))
    (repo / contract.MATTING / "1" / "model.sm90.plan").unlink()
    with pytest.raises(EngineMismatch, match="missing"):
        stamp.check_repository(repo, H100)


def test_a_cpu_repository_has_nothing_to_check(tmp_path: Path) -> None:
    (tmp_path / "repo" / contract.MATTING / "1").mkdir(parents=True)
    write_manifest(tmp_path / "repo", "cpu")
    assert stamp.check_repository(tmp_path / "repo", H100) is None


@pytest.mark.parametrize("state", ["missing", "empty", "engines-without-manifest"])
def test_a_folder_that_was_never_built_is_not_ready(tmp_path: Path, state: str) -> None:
    repo = tmp_path / "repo"
    if state == "empty":
        repo.mkdir()
    elif state == "engines-without-manifest":
        repo = fake_repository(tmp_path, ("10.3.0", "9.0"))
        (repo / repository.MANIFEST).unlink()
    with pytest.raises(EngineMismatch, match=r"no built model repository.*matteserve build --target gpu --if-stale"):
        stamp.check_repository(repo, H100)
    proc = subprocess.run(
        [sys.executable, "-m", "matteserve.cli", "check-engine", str(repo)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no built model repository" in proc.stderr


def test_a_gpu_manifest_without_stamps_is_not_a_cpu_repository(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    write_manifest(tmp_path / "repo", "gpu")
    with pytest.raises(EngineMismatch, match="has none"):
        stamp.check_repository(tmp_path / "repo", H100)


def test_a_corrupt_stamp_is_refused(tmp_path: Path) -> None:
    repo = fake_repository(tmp_path, ("10.3.0", "9.0"))
    (repo / contract.MATTING / "1" / "model.sm90.plan.json").write_text("{")
    with pytest.raises(ModelError, match="not an engine stamp"):
        stamp.check_repository(repo, H100)


def test_serve_and_check_engine_refuse_gpu_engines_on_this_node(tmp_path: Path) -> None:
    """This machine has no GPU/TensorRT: a GPU repository must be refused before Triton starts."""
    if stamp.current_runtime() is not None:
        pytest.skip("this node has a GPU with TensorRT; the mismatch cases above cover it")
    repo = fake_repository(tmp_path, ("10.3.0", "9.0"))
    cli = [sys.executable, "-m", "matteserve.cli"]
    for args in (["check-engine", str(repo)], ["serve", "--repository", str(repo)]):
        proc = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 1, proc.stderr
        assert "no NVIDIA GPU with TensorRT" in proc.stderr
