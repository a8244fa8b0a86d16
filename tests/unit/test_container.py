"""The container's CPU budget read from fake cgroup files, and the python backend's shm sized to /dev/shm."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from matteserve import container
from matteserve.errors import MatteserveError

GIB = 1024**3


def cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text + "\n")
    return tmp_path


@pytest.fixture
def many_cores(monkeypatch: pytest.MonkeyPatch) -> int:
    """A 224-thread host, as a DGX shows itself to every container on it."""
    monkeypatch.setattr(container, "visible_cpus", lambda: 224)
    return 224


@pytest.mark.parametrize(
    ("files", "budget"),
    [
        ({"cpu.max": "400000 100000"}, 4.0),  # cgroup v2, 4-CPU pod limit
        ({"cpu.max": "250000 100000"}, 2.5),
        ({"cpu/cpu.cfs_quota_us": "600000", "cpu/cpu.cfs_period_us": "100000"}, 6.0),  # cgroup v1
        ({"cpu,cpuacct/cpu.cfs_quota_us": "200000", "cpu,cpuacct/cpu.cfs_period_us": "100000"}, 2.0),
    ],
)
def test_a_pod_limit_on_a_big_host_gives_the_limit_not_the_host_cores(
    tmp_path: Path, many_cores: int, files: dict[str, str], budget: float
) -> None:
    assert container.cpu_budget(cgroup(tmp_path, files), env={}) == budget


@pytest.mark.parametrize(
    "files",
    [{"cpu.max": "max 100000"}, {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, {}],
)
def test_no_quota_means_the_cores_the_process_may_run_on(
    tmp_path: Path, many_cores: int, files: dict[str, str]
) -> None:
    assert container.cpu_budget(cgroup(tmp_path, files), env={}) == many_cores


def test_a_quota_above_the_visible_cores_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(container, "visible_cpus", lambda: 2)
    assert container.cpu_budget(cgroup(tmp_path, {"cpu.max": "800000 100000"}), env={}) == 2


def test_an_explicit_cpu_count_wins_over_the_cgroup(tmp_path: Path, many_cores: int) -> None:
    root = cgroup(tmp_path, {"cpu.max": "400000 100000"})
    assert container.cpu_budget(root, env={"MATTESERVE_CPUS": "12"}) == 12
    with pytest.raises(MatteserveError, match="MATTESERVE_CPUS"):
        container.cpu_budget(root, env={"MATTESERVE_CPUS": "lots"})


def test_instance_sizing_rounds_a_fractional_budget_down_but_never_to_zero(tmp_path: Path, many_cores: int) -> None:
    assert container.cpu_cores(cgroup(tmp_path, {"cpu.max": "250000 100000"}), env={}) == 2
    assert container.cpu_cores(tmp_path, env={"MATTESERVE_CPUS": "0.5"}) == 1


def test_python_shm_regions_together_stay_within_dev_shm() -> None:
    # 2 GiB of /dev/shm and 190 instances (what a 224-thread host rendered): each region shrinks.
    for instances in (2, 6, 19):
        each = container.python_shm_bytes(instances, 2 * GIB)
        assert each * instances <= container.SHM_SHARE * 2 * GIB
        assert each % container.MIB == 0
    assert container.python_shm_bytes(2, 64 * GIB) == container.SHM_WANTED_BYTES


def test_too_small_a_dev_shm_is_said_and_given_the_floor(caplog: pytest.LogCaptureFixture) -> None:
    assert container.python_shm_bytes(190, 2 * GIB) == container.SHM_SMALLEST_BYTES
    assert "too small" in caplog.text


def test_instance_counts_follow_the_container_budget_not_the_host(
    monkeypatch: pytest.MonkeyPatch, many_cores: int
) -> None:
    from matteserve.build.configs import ServingPlan, Target
    from matteserve.zoo import ZOO

    monkeypatch.setenv("MATTESERVE_CPUS", "4")
    plan = ServingPlan.for_host(ZOO["u2netp"], Target.GPU)
    assert (plan.preprocess_instances, plan.postprocess_instances) == (1, 2)


def test_triton_gets_a_shm_region_sized_for_the_repository_python_instances(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from matteserve.build import repository
    from matteserve.build.configs import ServingPlan, Target
    from matteserve.cli import app
    from matteserve.zoo import ZOO

    plan = ServingPlan.for_host(ZOO["u2netp"], Target.GPU, cores=12, engine_files=(("9.0", "model.sm90.plan"),))
    for model, text in repository.render(plan).items():
        (tmp_path / model).mkdir()
        (tmp_path / model / "config.pbtxt").write_text(text)
    instances = plan.preprocess_instances + plan.postprocess_instances
    assert repository.python_instances(tmp_path) == instances == 4 + 6  # the engine and ensemble are not python
    result = CliRunner().invoke(app, ["python-shm", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert int(result.output) == container.python_shm_bytes(instances, container.dev_shm_bytes())


def test_serving_processes_keep_image_sized_buffers_unless_told_otherwise() -> None:
    env = container.serving_environment({"PATH": "/bin"})
    assert env == {"PATH": "/bin", "OMP_NUM_THREADS": "1", **container.MALLOC_ENV}
    assert int(env["MALLOC_MMAP_THRESHOLD_"]) == 32 * 2**20  # glibc refuses more
    assert env["MALLOC_ARENA_MAX"] == "2"
    mine = container.serving_environment({"MALLOC_TRIM_THRESHOLD_": "0", "OMP_NUM_THREADS": "4"})
    assert (mine["MALLOC_TRIM_THRESHOLD_"], mine["OMP_NUM_THREADS"]) == ("0", "4")


# A fresh interpreter mallocs 16 MiB and says whether the block came from the main heap (kept and
# reused) or from a mapping of its own (glibc's default above 128 KiB: unmapped again on free).
_HEAP_OR_MAP = """
import ctypes, sys
from matteserve import container
given = {
    "tune": {"GLIBC_TUNABLES": "glibc.malloc.arena_max=8"},  # set at start in glibc's other form: left alone
    "already-set": dict(container.MALLOC_ENV),
}[sys.argv[1]]
applied = container.tune_allocator(given)
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
block = libc.malloc(16 << 20)
lo = hi = 0
for line in open("/proc/self/maps"):
    if line.rstrip().endswith("[heap]"):
        lo, hi = (int(a, 16) for a in line.split()[0].split("-"))
print(" ".join(applied), "|", lo <= block < hi)
"""


@pytest.mark.parametrize(("mode", "applied", "in_heap"), [
    ("tune", "MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=268435456", True),
    ("already-set", "", False),  # the variables were in the environment at start: nothing to do here
])  # fmt: skip
def test_a_server_started_by_hand_tunes_its_own_allocator(mode: str, applied: str, in_heap: bool) -> None:
    """Without the variables at start (``matteserve gateway`` run by hand), mallopt applies each one
    the environment did not set; the child's environment has none, so "already-set" shows glibc's default."""
    env = {k: v for k, v in os.environ.items() if k not in container.MALLOC_ENV}
    argv = [sys.executable, "-c", _HEAP_OR_MAP, mode]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [*applied.split(), "|", str(in_heap)]
