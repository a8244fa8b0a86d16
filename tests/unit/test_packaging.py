"""The package installs in pieces, from a clean copy of the repository with a plain ``pip install``:
the base alone is a working client with no server runtime, and the gateway extra runs the gateway
without Triton or the model runtimes (what the slim gateway image installs)."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from matteserve.extras import EXTRA_OF_MODULE

from ..conftest import extra_installs  # type: ignore[import-not-found]

ROOT = Path(__file__).resolve().parents[2]
SERVER_RUNTIMES = {"nvidia-pytriton", "onnxruntime", "onnx"}

# Run by the fresh venv's interpreter: one call to a port nothing listens on, and what is installed.
CLIENT_PROBE = """
import importlib.metadata, json, socket
from matteserve.client import Client, RetryPolicy
from matteserve.client.errors import RemoteError

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
error = None
with Client(f"127.0.0.1:{port}", retry=RetryPolicy(attempts=1)) as client:
    try:
        client.remove(b"not even an image", timeout=10)
    except RemoteError as e:
        error = {"type": type(e).__name__, "code": e.code.name}
installed = sorted(d.metadata["Name"] for d in importlib.metadata.distributions())
print(json.dumps({"error": error, "installed": installed}))
"""


@pytest.fixture(scope="module")
def clean_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository as a fresh clone has it: no venv, no generated stubs, no build output."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    copy = tmp_path_factory.mktemp("clone") / "matteserve"
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    return copy


def fresh_venv(root: Path, requirement: str) -> Path:
    """A new venv with only ``requirement`` installed; returns its python. It gets no pip of its own: this
    venv's pip installs into it, building the package as a user's ``pip install`` does (build isolation,
    the build requirements from the registry or pip's cache)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    pip = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "--quiet",
        "--no-compile",
        "--disable-pip-version-check",
    ]
    result = subprocess.run([*pip, requirement], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return python


def run_in(program: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a program of a fresh venv from its bin/, outside the repository, whose source folders could
    otherwise stand in for what was installed."""
    return subprocess.run([str(program), *args], cwd=program.parent, capture_output=True, text=True, check=False)


def test_the_base_install_is_a_working_client_with_no_server_side_package(clean_copy: Path, tmp_path: Path) -> None:
    before = sorted((clean_copy / "build").rglob("*"))
    python = fresh_venv(tmp_path / "venv", str(clean_copy))

    probe = run_in(python, "-c", CLIENT_PROBE)
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    # The client's own typed error for a gateway that is not there, not an ImportError or a raw grpc one.
    assert found["error"] == {"type": "BackendUnavailable", "code": "UNAVAILABLE"}
    installed = {canonicalize_name(name) for name in found["installed"]}
    assert "matteserve" in installed
    assert not (SERVER_RUNTIMES | {"tritonclient"}) & installed
    # The command is installed with the package; without an extra it says which one to install.
    command = run_in(python.parent / "matteserve", "--help")
    assert command.returncode == 1
    assert "pip install 'matteserve[gateway]'" in command.stderr
    assert "Traceback" not in command.stderr
    # setuptools built outside the source folder build/ (the matteserve.build package): no build/lib.
    assert sorted((clean_copy / "build").rglob("*")) == before


def test_the_gateway_extra_runs_the_gateway_without_triton_or_the_model_runtimes(
    clean_copy: Path, tmp_path: Path
) -> None:
    python = fresh_venv(tmp_path / "venv", f"{clean_copy}[gateway]")

    matteserve = python.parent / "matteserve"
    usage = run_in(matteserve, "gateway", "--help")
    assert usage.returncode == 0, usage.stderr
    assert "--triton" in usage.stdout
    probe = run_in(python, "-c", "import matteserve.gateway.server\n" + CLIENT_PROBE)
    assert probe.returncode == 0, probe.stderr
    assert not SERVER_RUNTIMES & {canonicalize_name(name) for name in json.loads(probe.stdout)["installed"]}
    assert run_in(matteserve, "remove", "--help").returncode == 0
    # A server subcommand gets as far as importing the server side, and says what to install.
    build = run_in(matteserve, "build", "--out", str(tmp_path / "repository"))
    assert build.returncode == 1
    assert "pip install 'matteserve[server]'" in build.stderr
    assert "Traceback" not in build.stderr


def test_every_module_the_commands_name_as_missing_is_installed_by_the_extra_they_name() -> None:
    providers = importlib.metadata.packages_distributions()
    for module, extra in EXTRA_OF_MODULE.items():
        assert {canonicalize_name(d) for d in providers[module]} & extra_installs(extra), (
            f"{extra} does not install {module}"
        )
    # ... and every package the extras add is in the table, so none goes missing without a message.
    covered = {canonicalize_name(d) for module in EXTRA_OF_MODULE for d in providers[module]}
    for extra in ("gateway", "gpu", "server", "loadtest"):
        assert extra_installs(extra) <= covered, (
            f"{extra_installs(extra) - covered} ({extra} extra) missing from EXTRA_OF_MODULE"
        )
