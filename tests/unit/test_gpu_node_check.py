"""deploy/gpu-node-check on this CPU: the wheel budget, unpacking wheels without pip, instance counts
sized to the host, Triton's HTTP binary request format, and CPU time read for a process tree."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

from matteserve import container
from matteserve.build import configs, repository
from matteserve.build.configs import ServingPlan, Target
from matteserve.zoo import ZOO

CHECK = Path(__file__).resolve().parents[2] / "deploy" / "gpu-node-check"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"gpu_node_{name}", CHECK / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


check, pack = load("check"), load("pack")


def rendered_repository(folder: Path) -> Path:
    plan = ServingPlan.for_host(ZOO["u2netp"], Target.CPU, cores=2, max_batch_size=1)
    for model, text in repository.render(plan).items():
        (folder / model).mkdir(parents=True)
        (folder / model / "config.pbtxt").write_text(text)
    return folder


def test_pre_and_post_are_sized_to_the_host_as_a_gpu_deployment_sizes_them(tmp_path: Path) -> None:
    cores = 16
    pre, post = container.gpu_python_instances(cores)
    out = check.render(rendered_repository(tmp_path / "bundle"), tmp_path / "work", pre, post)
    parsed = {m: configs.from_pbtxt((out / m / "config.pbtxt").read_text()) for m in ("preprocess", "postprocess")}
    assert [g.count for g in parsed["preprocess"].instance_group] == [5]
    assert [g.count for g in parsed["postprocess"].instance_group] == [8]
    gpu = ServingPlan.for_host(ZOO["u2netp"], Target.GPU, cores=cores)
    assert (gpu.preprocess_instances, gpu.postprocess_instances) == (pre, post), "one rule for both"
    assert check.python_instances(out) == repository.python_instances(out) == 5 + 8 + 1  # + the matting step


def test_wheels_are_unpacked_without_pip_keeping_executables_executable(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "fake-1.0-py3-none-any.whl", "w") as archive:
        binary = zipfile.ZipInfo("pytriton/tritonserver/bin/tritonserver")
        binary.external_attr = 0o755 << 16
        archive.writestr(binary, "#!/bin/sh\necho triton\n")
        archive.writestr("fake/__init__.py", "VALUE = 1\n")
    site = tmp_path / "site"
    assert check.extract_wheels(wheels, site) == ["fake-1.0-py3-none-any.whl"]
    assert os.access(site / "pytriton/tritonserver/bin/tritonserver", os.X_OK)
    assert subprocess.run([site / "pytriton/tritonserver/bin/tritonserver"], capture_output=True, text=True).stdout == (
        "triton\n"
    )
    assert check.extract_wheels(wheels, site) == [], "unpacked once"


def test_the_bundle_refuses_wheels_over_its_budget(tmp_path: Path) -> None:
    small, big = tmp_path / "a.whl", tmp_path / "b.whl"
    small.write_bytes(b"x" * 10)
    big.write_bytes(b"x" * 100)
    assert pack.check_budget([small], budget=50) == 10
    with pytest.raises(SystemExit, match="over the 0 MB budget"):
        pack.check_budget([small, big], budget=50)
    command = pack.download_command("3.11", tmp_path)
    wanted = {"--no-deps", "--only-binary=:all:", "--python-version=3.11", "--platform=manylinux_2_35_x86_64"}
    assert wanted <= set(command)
    assert "nvidia-pytriton==0.7.0" in command
    assert not [w for w in pack.WHEELS if w.split("=")[0] in {"numpy", "onnxruntime", "grpcio", "tritonclient"}]
    assert pack.null_repository_command(tmp_path)[3:7] == ["build", "--model", "null", "--max-batch-size"]


def test_the_request_is_triton_binary_tensor_format_and_the_result_is_read_back() -> None:
    body, header_length = check.encode_request(b"\xff\xd8jpeg", b'{"format": "png"}')
    header = body[:header_length].decode()
    assert '"binary_data_size": 10' in header  # 4-byte length + 6 bytes
    assert body[header_length:].startswith((6).to_bytes(4, "little") + b"\xff\xd8jpeg")
    response_header = b'{"outputs": [{"name": "RESULT", "parameters": {"binary_data_size": 9}}]}'
    response = response_header + (5).to_bytes(4, "little") + b"PNG!!"
    assert check.decode_result(response, len(response_header)) == b"PNG!!"


def fake_proc(tmp_path: Path, rows: dict[int, tuple[int, int, int]]) -> Path:
    """/proc/<pid>/stat with (ppid, utime, stime) in clock ticks; the command name has a space and a ')'."""
    for pid, (ppid, utime, stime) in rows.items():
        (tmp_path / str(pid)).mkdir()
        fields = ["S", str(ppid), *["0"] * 9, str(utime), str(stime), *["0"] * 5]
        (tmp_path / str(pid) / "stat").write_text(f"{pid} (triton stub) x) " + " ".join(fields) + "\n")
    (tmp_path / "self").mkdir()
    return tmp_path


def test_server_cpu_is_tritonserver_and_its_descendants_only(tmp_path: Path) -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    proc = fake_proc(tmp_path, {10: (1, 100, 50), 11: (10, 30, 20), 12: (11, 5, 5), 20: (1, 999, 999)})
    assert check.tree_cpu_seconds(10, proc) == pytest.approx((150 + 50 + 10) / ticks)


def test_real_process_tree_cpu_is_counted() -> None:
    busy = "import subprocess, sys, time\n" + (
        "c = subprocess.Popen([sys.executable, '-c', 'import time\\nt=time.process_time()\\n"
        "while time.process_time() - t < 0.4: pass\\ntime.sleep(5)'])\ntime.sleep(5)"
    )
    parent = subprocess.Popen([sys.executable, "-c", busy], start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and check.tree_cpu_seconds(parent.pid) < 0.4:
            time.sleep(0.1)
        assert check.tree_cpu_seconds(parent.pid) >= 0.4, "the busy child's CPU counts for its parent's tree"
    finally:
        os.killpg(parent.pid, signal.SIGKILL)  # the parent and its busy child
        parent.wait()


def test_a_host_with_numpy_2_is_refused_with_what_to_do() -> None:
    # Measured here: under numpy 2.4 the bundled Triton 2.51 stub died on the first BYTES request.
    assert check.numpy_problem("1.26.4") is None
    problem = check.numpy_problem("2.4.6")
    assert problem is not None
    assert "numpy < 2" in problem
