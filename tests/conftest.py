"""Shared fixtures: real photos, a built model repository and a real Triton server on free ports."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pytest
from PIL import Image

from matteserve import container, contract
from matteserve.build.builder import build
from matteserve.loadtest.bench import free_port
from matteserve.loadtest.runner import Target
from matteserve.tritonserver import TritonConfig, TritonServer
from matteserve.zoo import get_spec

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2

    from matteserve.build.configs import ServingPlan
    from matteserve.client import Client
    from matteserve.gateway import GatewayProcess

# Max batch for the test repository: fixed, so that batching is exercised whatever the tuner would
# pick on this machine.
TEST_MAX_BATCH = 4


def parsed_configs(plan: ServingPlan) -> dict[str, model_config_pb2.ModelConfig]:
    """Every config the plan renders, parsed back from its text, by model name."""
    from matteserve.build import configs, repository

    return {name: configs.from_pbtxt(text) for name, text in repository.render(plan).items()}


def assert_steps_agree_on_tensors(cfgs: dict[str, model_config_pb2.ModelConfig]) -> None:
    """Each tensor a later step reads has the type and dims its producer writes."""
    produced = {t.name: t for name in (contract.PREPROCESS, contract.MATTING) for t in cfgs[name].output}
    for name in (contract.MATTING, contract.POSTPROCESS):
        for t in cfgs[name].input:
            if t.name in produced:
                assert (t.data_type, list(t.dims)) == (produced[t.name].data_type, list(produced[t.name].dims))


def runs_with_serving_environment(pid: int) -> bool:
    """Whether process ``pid`` started with every variable of the serving environment
    (``container.serving_environment``: glibc's allocator settings, one numpy thread)."""
    environ = set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
    return {f"{k}={v}".encode() for k, v in container.serving_environment({}).items()} <= environ


def installed_tool(name: str, installed_by: str) -> str:
    """A program the project's install provides: beside this interpreter first (a venv's bin/ is not on
    PATH under `make test`), else on PATH. Missing fails the test, never skips it: the check would
    otherwise pass unseen wherever the install is incomplete."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    if found is None:
        pytest.fail(f"{name} is not installed: {installed_by}")
    return found


def run_matteserve(*args: object, timeout: float) -> str:
    """Run ``matteserve ARGS`` in a child process as a user would; its stdout, or a failure that shows
    its output when it exits with an error."""
    cmd = [sys.executable, "-m", "matteserve.cli", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def matteserve_accepts(argv: list[str]) -> None:
    """Parse ``matteserve SUBCOMMAND ...`` as the command would, without running it; an option it does
    not have, or a value of the wrong type, raises."""
    import typer

    from matteserve.cli import app

    assert argv[0] == "matteserve", argv
    typer.main.get_command(app).commands[argv[1]].make_context(argv[1], argv[2:])  # type: ignore[attr-defined]


def extra_installs(extra: str) -> set[str]:
    """The distributions ``pip install matteserve[extra]`` brings (canonical names), following the
    matteserve[...] extras inside it."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    root = Path(__file__).resolve().parents[1]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names: set[str] = set()
    for req in map(Requirement, extras[extra]):
        if canonicalize_name(req.name) == "matteserve":
            names |= set().union(*(extra_installs(inner) for inner in req.extras))
        else:
            names.add(canonicalize_name(req.name))
    return names


def jpeg_bytes(img: Image.Image | np.ndarray, quality: int = 90, **save: object) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, **save)
    return buf.getvalue()


@pytest.fixture(scope="session")
def photo_arrays() -> dict[str, np.ndarray]:
    """Real photos shipped with scikit-image (the build's calibration set), as HxWx3 uint8."""
    from matteserve.build.photos import calibration

    return calibration()


@pytest.fixture(scope="session")
def photos(photo_arrays: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {name: jpeg_bytes(arr) for name, arr in photo_arrays.items()}


@pytest.fixture(scope="session")
def make_photo(photo_arrays: dict[str, np.ndarray]) -> Callable[[int, int], bytes]:
    """A photo-like JPEG of any size (a real photo resized)."""

    def make(width: int, height: int, name: str = "astronaut") -> bytes:
        return jpeg_bytes(Image.fromarray(photo_arrays[name]).resize((width, height), Image.Resampling.BICUBIC))

    return make


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Downloads are shared with the user's cache (the u2netp wheel); builds go to a temp folder."""
    return tmp_path_factory.mktemp("matteserve")


@pytest.fixture(scope="session")
def repository(cache_root: Path) -> Path:
    # The onnxruntime FP32 reference, unmeasured: the runtime choice has its own tests.
    repo = cache_root / "repo-cpu"
    return build(get_spec("u2netp"), repo, max_batch_size=TEST_MAX_BATCH, queue_delay_us=20_000, measure_seconds=0)


def start_triton(repository: Path, log_dir: Path) -> TritonServer:
    cfg = TritonConfig(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    return TritonServer(cfg, log_path=log_dir / f"triton-{cfg.grpc_port}.log").start()


@pytest.fixture(scope="session")
def triton(repository: Path, cache_root: Path) -> Iterator[TritonServer]:
    server = start_triton(repository, cache_root)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def triton_infer(triton: TritonServer) -> Callable[..., tuple[bytes, contract.Meta]]:
    """Call the ensemble directly with tritonclient: (image bytes, options) -> (result, meta)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton.cfg.grpc_url)

    def infer(image: bytes, options: dict[str, object] | None = None) -> tuple[bytes, contract.Meta]:
        inputs = contract.ensemble_inputs(image, json.dumps(options or {}).encode())
        return contract.ensemble_result(client.infer(contract.ENSEMBLE, inputs, client_timeout=120))

    return infer


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)


os.environ.setdefault("OMP_NUM_THREADS", "1")


def start_gateway(tritons: list[str], log_dir: Path, **settings: object) -> GatewayProcess:
    """A real gateway (child process) on free loopback ports in front of the given Triton gRPC URLs."""
    from matteserve.gateway import GatewayConfig, GatewayProcess

    settings = {"health_interval_s": 0.25, "grace_s": 10.0} | settings
    cfg = GatewayConfig(tritons=tuple(tritons), port=free_port(), metrics_port=free_port(), **settings)  # type: ignore[arg-type]
    return GatewayProcess(cfg, log_path=log_dir / f"gateway-{cfg.port}.log").start()


AnyTarget = TypeVar("AnyTarget", bound=Target)


@contextlib.asynccontextmanager
async def closing(target: AnyTarget) -> AsyncIterator[AnyTarget]:
    """A load-test target, closed after the block however it ends."""
    try:
        yield target
    finally:
        await target.close()


def gateway_fixture(log_name: str, **settings: object) -> Any:
    """A module-scoped fixture: a gateway with ``settings`` in front of the session's Triton, logging
    under a folder named ``log_name``, stopped after the module."""

    @pytest.fixture(scope="module")
    def started(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
        with start_gateway([triton.cfg.grpc_url], tmp_path_factory.mktemp(log_name), **settings) as gw:
            yield gw

    return started


def gateway_metric(gw: GatewayProcess, name: str, **labels: str) -> float:
    """The sum of the gateway's ``name`` samples whose labels include ``labels`` (0 when none)."""
    from matteserve.loadtest import prometheus

    return prometheus.total(prometheus.read(gw.cfg.metrics_url), name, **labels)


@pytest.fixture(scope="session")
def gateway(triton: TritonServer, cache_root: Path) -> Iterator[GatewayProcess]:
    """One gateway in front of the session's Triton; tests that need fresh counters start their own."""
    process = start_gateway([triton.cfg.grpc_url], cache_root)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def gateway_client(gateway: GatewayProcess) -> Iterator[Client]:
    from matteserve.client import Client

    with Client(gateway.target, timeout=120.0) as client:
        yield client


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> list[str]:
    """The child's output lines up to the first that holds ``needle``; fails if it never comes."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} not printed; output so far:\n{''.join(seen)}")


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[subprocess.Popen[str], int]]]:
    """Start `matteserve serve REPOSITORY FLAGS...` as a user would, on free ports: (process, Triton's
    gRPC port). A process a test leaves running is killed when it ends."""
    started: list[subprocess.Popen[str]] = []

    def start(repository: Path, *flags: str, grpc_port: int | None = None) -> tuple[subprocess.Popen[str], int]:
        grpc_port = grpc_port or free_port()
        args = [sys.executable, "-m", "matteserve.cli", "serve", "--repository", str(repository), *flags]
        args += ["--grpc-port", str(grpc_port)]
        for flag in ("--http-port", "--metrics-port", "--gateway-port", "--gateway-metrics-port"):
            args += [flag, str(free_port())]
        started.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        return started[-1], grpc_port

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
