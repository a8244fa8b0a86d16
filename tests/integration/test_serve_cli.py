"""`matteserve serve` as a user runs it: ready message, a direct Triton call, clean SIGTERM exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import tritonclient.grpc as grpcclient

from matteserve import contract

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
        meta = json.loads(client.infer(contract.ENSEMBLE, inputs, client_timeout=60).as_numpy(contract.META)[0, 0])
        assert (meta["width"], meta["height"]) == (320, 240)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
