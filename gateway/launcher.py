"""Start a gateway in a child process and stop it: for ``matteserve serve``, tests and benchmarks."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from matteserve.errors import BackendUnavailable
from matteserve.gateway.config import GatewayConfig
from matteserve.tritonserver import launch

logger = logging.getLogger(__name__)


def health_status(target: str, service: str = "", timeout: float = 2.0) -> str:
    """SERVING / NOT_SERVING / ... of a plaintext gateway, or UNREACHABLE."""
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


class GatewayProcess:
    """``matteserve gateway`` with a given config; ``start()`` waits until it answers. It dies with the
    thread that started it, so a killed parent never leaves a gateway holding its ports, and it runs
    with the serving environment (glibc keeps image-sized buffers: half the gateway's CPU per image)."""

    def __init__(self, cfg: GatewayConfig, log_path: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.cfg = cfg
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return self.cfg.address

    def start(self, timeout: float = 30.0, wait_serving: bool = True) -> GatewayProcess:
        """Start, wait until the port answers health checks (and until SERVING, unless told not to)."""
        cmd = [sys.executable, "-m", "matteserve", "gateway", *self.cfg.to_args()]
        logger.info("starting gateway: %s", " ".join(cmd))
        self.process = launch(cmd, self.env or os.environ, self.log_path)
        want = {"SERVING"} if wait_serving else {"SERVING", "NOT_SERVING"}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                where = f"; see {self.log_path}" if self.log_path else ""
                raise BackendUnavailable(f"the gateway exited with code {self.process.returncode}{where}")
            # Over TLS a plaintext health check cannot answer: an open port is what can be seen.
            if (
                _port_open(self.cfg.host, self.cfg.port)
                if self.cfg.tls
                else health_status(self.target, "", 0.5) in want
            ):
                return self
            time.sleep(0.1)
        self.stop()
        raise BackendUnavailable(f"the gateway was not {'/'.join(sorted(want))} within {timeout:.0f} s")

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM (graceful), then SIGKILL after the grace period; returns the exit code."""
        proc, self.process = self.process, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout if timeout is not None else self.cfg.grace_s + 10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def __enter__(self) -> GatewayProcess:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _port_open(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
