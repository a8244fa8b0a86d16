"""`matteserve serve` as a user runs it: ready message, a direct Triton call, clean SIGTERM exit."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import tritonclient.grpc as grpcclient

from matteserve import contract
from matteserve.tritonserver import SHM_DIR, SHM_PREFIX

from ..conftest import free_port, wait_for_line  # type: ignore[import-not-found]


def test_serve_starts_triton_answers_and_stops_cleanly_on_sigterm(
    repository: Path, make_photo: Callable[..., bytes], serve: Callable[..., tuple[subprocess.Popen[str], int]]
) -> None:
    proc, grpc_port = serve(repository)
    lines = wait_for_line(proc, "Triton ready", timeout=120)
    assert f"127.0.0.1:{grpc_port}" in lines[-1]
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    inputs = contract.ensemble_inputs(make_photo(320, 240), b'{"format": "mask"}')
    _, meta = contract.ensemble_result(client.infer(contract.ENSEMBLE, inputs, client_timeout=60))
    assert (meta.width, meta.height) == (320, 240)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def _processes(field: int, value: int) -> list[int]:
    """Live processes whose /proc stat ``field`` (after the name: 0 state, 1 ppid, 2 pgrp) is ``value``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[field]) == value and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _children(pid: int) -> list[int]:
    return _processes(1, pid)


def _group(pgid: int) -> list[int]:
    return _processes(2, pgid)


def test_a_triton_killed_under_serve_leaves_no_stub_and_no_shared_memory_behind(
    repository: Path, serve: Callable[..., tuple[subprocess.Popen[str], int]]
) -> None:
    grpc_port = free_port()
    # A region a previous kill -9 left behind: serve removes it when it starts.
    stale = SHM_DIR / f"{SHM_PREFIX}{grpc_port}_left-by-a-killed-triton"
    stale.write_bytes(b"\0" * 4096)
    proc, _ = serve(repository, grpc_port=grpc_port)
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
