"""Run the real Triton Inference Server from the ``nvidia-pytriton`` wheel.

The wheel carries ``tritonserver``, its python backend and one python-backend stub per CPython
version. The stub embeds the system ``libpython3.X``; the backend folder is assembled once with the
stub for the running Python, and this environment's site-packages is made visible to it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import matteserve
from matteserve import container
from matteserve.build.repository import python_instances
from matteserve.errors import BackendUnavailable
from matteserve.paths import cache_dir

logger = logging.getLogger(__name__)

# Images cross the python backend's shared memory: 1 MB by default, far too small for photos. Each
# instance's starting region is sized from /dev/shm and the instance count (container.python_shm_bytes).
SHM_GROWTH_BYTES = 64 * 1024 * 1024
SHM_DIR = Path("/dev/shm")
# Every region of a server this launcher starts is named matteserve_<gRPC port>_...
SHM_PREFIX = "matteserve_"


def _wheel_root() -> Path:
    try:
        import pytriton
    except ImportError as e:
        raise BackendUnavailable(
            "the Triton server comes from the nvidia-pytriton wheel: pip install 'matteserve[server]'"
        ) from e
    return Path(pytriton.__file__).parent / "tritonserver"


def _libs_dir() -> Path:
    return _wheel_root().parent.parent / "nvidia_pytriton.libs"


def backend_directory() -> Path:
    """A backends folder whose python backend has the stub for this Python next to it."""
    root = _wheel_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise BackendUnavailable(f"the Triton wheel has no python backend stub for Python {version}")
    target = cache_dir() / "triton" / f"backends-py{version}"
    python = target / "python"
    marker = python / ".source"
    if not (marker.is_file() and marker.read_text() == str(root)):
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(root / "backends" / "python", python, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, python / "triton_python_backend_stub")
        marker.write_text(str(root))
    return target


@dataclass
class TritonConfig:
    repository: Path
    address: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    log_verbose: int = 0
    extra_args: list[str] = field(default_factory=list)

    @property
    def grpc_url(self) -> str:
        return f"{self.address}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.address}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.address}:{self.metrics_port}/metrics"


def shm_prefix(cfg: TritonConfig) -> str:
    """Names of the python backend's shared-memory regions of this server: ours to clean up."""
    return f"{SHM_PREFIX}{cfg.grpc_port}_"


def remove_stale_shm(prefix: str = SHM_PREFIX) -> list[Path]:
    """Delete the regions named ``prefix*`` that no live process maps: a killed Triton and its stubs
    leave theirs behind (64 MB each), and nothing else ever removes them."""
    regions = sorted(SHM_DIR.glob(f"{prefix}*"))
    if not regions:
        return []
    mapped = _mapped_shm()
    stale = [r for r in regions if str(r) not in mapped]
    for region in stale:
        region.unlink(missing_ok=True)
    if stale:
        logger.info("removed %d stale shared-memory region(s) %s*", len(stale), SHM_DIR / prefix)
    return stale


def _mapped_shm() -> set[str]:
    mapped: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:  # the process exited, or is not ours to read
            continue
        for line in text.splitlines():
            if (at := line.find(f"{SHM_DIR}/")) >= 0:
                mapped.add(line[at:].removesuffix(" (deleted)"))
    return mapped


def command(cfg: TritonConfig) -> list[str]:
    region = container.python_shm_bytes(python_instances(cfg.repository), container.dev_shm_bytes())
    shm = f"shm-default-byte-size={region}"
    growth = f"shm-growth-byte-size={min(SHM_GROWTH_BYTES, region)}"
    return [
        str(_wheel_root() / "bin" / "tritonserver"),
        f"--model-repository={cfg.repository}",
        f"--backend-directory={backend_directory()}",
        f"--backend-config=python,{shm}",
        f"--backend-config=python,{growth}",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix(cfg)}",
        f"--http-address={cfg.address}",
        f"--http-port={cfg.http_port}",
        f"--grpc-address={cfg.address}",
        f"--grpc-port={cfg.grpc_port}",
        f"--metrics-address={cfg.address}",
        f"--metrics-port={cfg.metrics_port}",
        "--allow-gpu-metrics=false",
        "--metrics-config=histogram_latencies=true",
        "--strict-readiness=true",
        "--exit-on-error=true",
        f"--log-verbose={cfg.log_verbose}",
        *cfg.extra_args,
    ]


def environment() -> dict[str, str]:
    """The stub runs the system libpython; it needs this environment's packages and matteserve."""
    env = dict(os.environ)
    package_root = Path(matteserve.__file__).resolve().parent.parent
    paths = [str(package_root), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    # The stub's embedded interpreter is configured isolated and may ignore PYTHONPATH; it finds its
    # prefix from the first `python3` on PATH, so this environment's interpreter must come first
    # there (a venv's pyvenv.cfg then brings its site-packages), activated shell or not.
    env["PATH"] = os.pathsep.join(filter(None, [str(Path(sys.executable).parent), env.get("PATH")]))
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(_libs_dir()), env.get("LD_LIBRARY_PATH")]))
    return env


def die_with_parent(argv: list[str]) -> list[str]:
    """``argv`` run so that Linux SIGTERMs it (tritonserver, the gateway) when the thread that started it
    dies, so a crashed or killed CLI or test run never leaves a server holding its ports. util-linux's setpriv
    sets the death signal and execs: a ``preexec_fn`` doing the same runs Python between fork and
    exec, which crashed the child (SIGSEGV) while gRPC's threads ran in the parent."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        logger.warning("setpriv (util-linux) not found: %s will outlive this process if it is killed", argv[0])
        return argv
    return [setpriv, "--pdeathsig", "TERM", "--", *argv]


def launch(argv: list[str], env: Mapping[str, str], log_path: Path | None) -> subprocess.Popen[bytes]:
    """A server process (tritonserver, the gateway): the serving environment over ``env``
    (``container.serving_environment``), its own process group (stopping it stops its children),
    dying with the thread that started it (:func:`die_with_parent`), output appended to ``log_path``."""
    with contextlib.ExitStack() as files:
        log = files.enter_context(log_path.open("ab")) if log_path else subprocess.DEVNULL
        return subprocess.Popen(
            die_with_parent(argv),
            env=container.serving_environment(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


class TritonServer:
    """A tritonserver process: start, wait until ready, stop (SIGINT, then SIGKILL).

    Triton runs in its own session, so its python-backend stubs share its process group: stopping
    kills the whole group, and a Triton that died on its own (kill -9, OOM) takes its stubs with
    it at the next ``stop()`` instead of leaving them running with their shared memory."""

    def __init__(self, cfg: TritonConfig, log_path: Path | None = None) -> None:
        self.cfg = cfg
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180.0) -> TritonServer:
        remove_stale_shm(shm_prefix(self.cfg))
        logger.info("starting Triton: %s", " ".join(command(self.cfg)))
        self.process = launch(command(self.cfg), environment(), self.log_path)
        self.wait_ready(timeout)
        return self

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.cfg.http_url}/v2/health/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and (code := self.process.poll()) is not None:
                self.stop()
                raise BackendUnavailable(
                    f"tritonserver exited with code {code} while loading"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            if self.is_ready():
                return
            time.sleep(0.25)
        self.stop()
        raise BackendUnavailable(f"tritonserver was not ready within {timeout:.0f} s")

    def stop(self, grace: float = 20.0) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        self._kill_group(proc)

    def kill(self) -> None:
        """Hard stop, as a crash would look to clients."""
        proc, self.process = self.process, None
        if proc is not None:
            self._kill_group(proc)

    def _kill_group(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL whatever is left of Triton's process group (its stubs outlive a killed Triton),
        then remove the shared memory they held."""
        with contextlib.suppress(ProcessLookupError):  # empty: Triton stopped its stubs itself
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _wait_group_gone(proc.pid)
        remove_stale_shm(shm_prefix(self.cfg))

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_group_gone(pgid: int, timeout: float = 5.0) -> None:
    """Killed stubs were re-parented to init, which reaps them; their maps go with them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
