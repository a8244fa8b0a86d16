"""`matteserve serve` as a user runs it: ready message, a direct Triton call, clean SIGTERM exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import tritonclient.grpc as grpcclient

from matteserve import contract
from matteserve.tritonserver import SHM_DIR, SHM_PREFIX

from ..conftest import free_port  # type: ignore[import-not-found]


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> list[str]:
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


def test_serve_starts_triton_answers_and_stops_cleanly_on_sigterm(
    repository: Path, make_photo: Callable[..., bytes]
) -> None:
    ports = {
        "--http-port": free_port(),
        "--grpc-port": free_port(),
        "--metrics-port": free_port(),
        "--gateway-port": free_port(),
        "--gateway-metrics-port": free_port(),
    }
    args = [sys.executable, "-m", "matteserve.cli", "serve", "--repository", str(repository)]
    for flag, port in ports.items():
        args += [flag, str(port)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    try:
        lines = wait_for_line(proc, "Triton ready", timeout=120)
        assert f"127.0.0.1:{ports['--grpc-port']}" in lines[-1]
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{ports['--grpc-port']}")
        inputs = contract.ensemble_inputs(make_photo(320, 240), b'{"format": "mask"}')
        _, meta = contract.ensemble_result(client.infer(contract.ENSEMBLE, inputs, client_timeout=60))
        assert (meta.width, meta.height) == (320, 240)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # fields: state, ppid, pgrp, ...
            found.append(int(stat.parent.name))
    return found


def _group(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def test_a_triton_killed_under_serve_leaves_no_stub_and_no_shared_memory_behind(repository: Path) -> None:
    grpc_port = free_port()
    # A region a previous kill -9 left behind: serve removes it when it starts.
    stale = SHM_DIR / f"{SHM_PREFIX}{grpc_port}_left-by-a-killed-triton"
    stale.write_bytes(b"\0" * 4096)
    args = [sys.executable, "-m", "matteserve.cli", "serve", "--repository", str(repository)]
    args += ["--grpc-port", str(grpc_port), "--http-port", str(free_port()), "--metrics-port", str(free_port())]
    args += ["--gateway-port", str(free_port()), "--gateway-metrics-port", str(free_port())]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    try:
        wait_for_line(proc, "Triton ready", timeout=120)
        assert not stale.exists()
        (triton,) = [
            pid for pid in _children(proc.pid) if Path(f"/proc/{pid}/comm").read_text().strip() == "tritonserver"
        ]
        stubs = [pid for pid in _group(triton) if pid != triton]
        assert len(stubs) >= 3, "a python-backend stub per model instance"
        assert list(SHM_DIR.glob(f"{SHM_PREFIX}{grpc_port}_*")), "the stubs' regions carry this server's prefix"

        os.kill(triton, signal.SIGKILL)  # as an OOM killer or an operator would
        assert proc.wait(timeout=60) != 0, "serve reports that Triton died"
        deadline = time.monotonic() + 10
        while _group(triton) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _group(triton) == []
        assert list(SHM_DIR.glob(f"{SHM_PREFIX}{grpc_port}_*")) == []
    finally:
        stale.unlink(missing_ok=True)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
