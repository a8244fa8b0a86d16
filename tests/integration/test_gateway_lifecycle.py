"""TLS and mutual TLS, JSON logs that carry the request id, a graceful SIGTERM, and no gateway left behind
by a killed parent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from matteserve.client import TLS, Client, RemoveResult, RetryPolicy
from matteserve.client.errors import BackendUnavailable
from matteserve.gateway import GatewayProcess
from matteserve.gateway.config import LogFormat
from matteserve.tritonserver import TritonServer

from ..conftest import (  # type: ignore[import-not-found]
    free_port,
    installed_tool,
    runs_with_serving_environment,
    start_gateway,
)

NO_RETRY = RetryPolicy(attempts=1)


def openssl(*args: str | Path) -> None:
    binary = installed_tool("openssl", "`make system-deps` installs the Debian package openssl")
    subprocess.run([binary, *map(str, args)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate."""
    d = tmp_path_factory.mktemp("certs")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
            "-keyout", d / "ca.key", "-out", d / "ca.pem")  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", d / f"{name}.key", "-out", d / f"{name}.csr")  # fmt: skip
        openssl("x509", "-req", "-in", d / f"{name}.csr", "-CA", d / "ca.pem", "-CAkey", d / "ca.key",
                "-CAcreateserial", "-days", "1", "-extfile", d / "san.ext", "-out", d / f"{name}.pem")  # fmt: skip
    return d


def test_tls_serves_a_client_that_trusts_the_ca(
    triton: TritonServer, certs: Path, tmp_path: Path, make_photo: Callable[..., bytes]
) -> None:
    tls = {"tls_cert": certs / "server.pem", "tls_key": certs / "server.key"}
    with start_gateway([triton.cfg.grpc_url], tmp_path, **tls) as gw:
        with Client(gw.target, tls=TLS(certs / "ca.pem")) as client:
            assert client.remove(make_photo(64, 64), format="mask").width == 64
        with Client(gw.target, retry=NO_RETRY) as plaintext, pytest.raises(BackendUnavailable):
            plaintext.remove(make_photo(64, 64), timeout=5)


def test_mutual_tls_refuses_a_client_without_a_certificate(
    triton: TritonServer, certs: Path, tmp_path: Path, make_photo: Callable[..., bytes]
) -> None:
    tls = {"tls_cert": certs / "server.pem", "tls_key": certs / "server.key", "tls_client_ca": certs / "ca.pem"}
    with start_gateway([triton.cfg.grpc_url], tmp_path, **tls) as gw:
        mutual = TLS(certs / "ca.pem", client_cert=certs / "client.pem", client_key=certs / "client.key")
        with Client(gw.target, tls=mutual) as client:
            assert client.remove(make_photo(64, 64), format="mask").height == 64
        anonymous = Client(gw.target, tls=TLS(certs / "ca.pem"), retry=NO_RETRY)
        with anonymous, pytest.raises(BackendUnavailable):
            anonymous.remove(make_photo(64, 64), timeout=5)


def in_flight(gw: GatewayProcess) -> float:
    with urllib.request.urlopen(gw.cfg.metrics_url, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("matteserve_gateway_in_flight_requests "):
                return float(line.split()[1])
    return 0.0


def test_sigterm_finishes_the_request_in_flight_then_exits_and_json_logs_carry_its_request_id(
    triton: TritonServer, tmp_path: Path, make_photo: Callable[..., bytes]
) -> None:
    gw = start_gateway([triton.cfg.grpc_url], tmp_path, log_format=LogFormat.JSON, grace_s=30.0)
    photo = make_photo(1600, 1200)  # big enough to be still running when SIGTERM arrives
    outcome: dict[str, RemoveResult | Exception] = {}

    def call() -> None:
        with Client(gw.target, retry=NO_RETRY, timeout=120) as client:
            try:
                outcome["result"] = client.remove(photo, request_id="graceful-1")
            except Exception as e:
                outcome["result"] = e

    worker = threading.Thread(target=call)
    worker.start()
    deadline = time.monotonic() + 30
    while in_flight(gw) < 1:
        assert time.monotonic() < deadline, "the request never started"
        time.sleep(0.01)
    assert gw.process is not None
    process = gw.process
    process.terminate()  # SIGTERM
    worker.join(120)

    result = outcome["result"]
    assert isinstance(result, RemoveResult), result
    assert (result.width, result.height) == (1600, 1200)
    assert process.wait(30) == 0
    with Client(gw.target, retry=NO_RETRY) as client, pytest.raises(BackendUnavailable):
        client.remove(photo, timeout=2)

    assert gw.log_path is not None
    records = [json.loads(line) for line in gw.log_path.read_text().splitlines() if line.startswith("{")]
    mine = [r for r in records if r.get("request_id") == "graceful-1"]
    assert mine, "no JSON log line carries the request id"
    assert mine[-1]["code"] == "OK"
    assert mine[-1]["method"] == "Remove"
    assert {"ts", "level", "logger", "message", "duration_ms", "endpoint"} <= set(mine[-1])
    assert any("shutting down: 1 request(s) in flight" in r["message"] for r in records)


# Starts a gateway (no Triton behind it: it answers NOT_SERVING), prints its pid, then waits to be killed.
PARENT = """
import sys
from matteserve.gateway import GatewayConfig, GatewayProcess

cfg = GatewayConfig(tritons=("127.0.0.1:1",), port=int(sys.argv[1]), metrics_port=int(sys.argv[2]), grace_s=5)
print(GatewayProcess(cfg).start(wait_serving=False).process.pid, flush=True)
sys.stdin.read()
"""


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_gateway_dies_when_the_process_that_started_it_is_killed() -> None:
    args = [sys.executable, "-c", PARENT, str(free_port()), str(free_port())]
    parent = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    gateway = int(parent.stdout.readline())
    try:
        assert "gateway" in Path(f"/proc/{gateway}/cmdline").read_text().split("\0")
        parent.kill()  # SIGKILL: the parent gets no chance to stop its child
        parent.wait()
        deadline = time.monotonic() + 30
        while running(gateway):
            assert time.monotonic() < deadline, "the gateway outlived the process that started it"
            time.sleep(0.1)
    finally:
        if running(gateway):
            os.kill(gateway, signal.SIGKILL)


def test_the_gateway_runs_with_the_serving_allocator_settings(gateway: GatewayProcess) -> None:
    assert gateway.process is not None
    assert runs_with_serving_environment(gateway.process.pid)
