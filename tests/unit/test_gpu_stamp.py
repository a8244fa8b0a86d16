"""Engine stamps: a repository's engines are served only on the GPU and TensorRT they were built for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from matteserve import contract
from matteserve.build.gpu import stamp
from matteserve.build.gpu.build import _carried_engines
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
    return tmp_path / "repo"


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
    assert stamp.check_repository(tmp_path / "repo", H100) is None


def test_a_corrupt_stamp_is_refused(tmp_path: Path) -> None:
    repo = fake_repository(tmp_path, ("10.3.0", "9.0"))
    (repo / contract.MATTING / "1" / "model.sm90.plan.json").write_text("{")
    with pytest.raises(ModelError, match="not an engine stamp"):
        stamp.check_repository(repo, H100)


def test_engines_for_other_gpus_are_carried_only_when_built_the_same_way(tmp_path: Path) -> None:
    repo = fake_repository(tmp_path, ("10.3.0", "8.6"), ("10.3.0", "9.0"))
    same = _carried_engines(repo, "graph", {"max_batch_size": 32}, replaced="9.0")
    assert [s.plan for s in same] == ["model.sm86.plan"]
    assert _carried_engines(repo, "graph", {"max_batch_size": 64}, replaced="9.0") == []
    assert _carried_engines(repo, "other-graph", {"max_batch_size": 32}, replaced="9.0") == []


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
