#!/usr/bin/env python3
"""The CPU side of a GPU node, measured on the node: images/s and CPU core-ms per image.

On a GPU node the model is cheap and the CPU decodes, resizes and encodes every image, so the CPU
sets how many images per second one GPU serves. This runs on a bare CUDA host that has Python
(3.10-3.12 with its ``libpython3.X.so``) and numpy, and nothing else: no TensorRT, no network.
Everything else is in the bundle that ``pack.py`` makes:

    wheels/      nvidia-pytriton (Triton 2.51 and its python backend, a CUDA build), Pillow,
                 simplejpeg, fpng and matteserve itself, unpacked here without pip
    repository/  ``matteserve build --model null``: preprocess and postprocess as served, and a
                 stand-in matting step that does almost no work, so the figures are the CPU's
    photos/      photo-like JPEGs, one per size

It sizes preprocess/postprocess to this host's CPU budget (cgroup quota, or ``MATTESERVE_CPUS``) as
a GPU deployment does, starts Triton on loopback, sends every photo size in every output format for
``--seconds`` each over Triton's HTTP API from a closed loop of ``--concurrency`` senders, and reads
the CPU time of tritonserver and its python-backend processes from /proc.

    python3 check.py [--seconds 10] [--formats png,webp,mask,jpeg] [--concurrency N] [--out result.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
FORMATS = ("png", "webp", "mask", "jpeg")
ENSEMBLE, IMAGE, OPTIONS, RESULT = "remove_background", "IMAGE", "OPTIONS", "RESULT"
INSTANCES = re.compile(r"(instance_group\s*\{\s*count:\s*)\d+")


def extract_wheels(wheels: Path, site: Path) -> list[str]:
    """Unpack every wheel into ``site`` (once per wheel), keeping the files' exec bits (tritonserver
    and the python backend stub are executables); returns the wheels unpacked."""
    site.mkdir(parents=True, exist_ok=True)
    done = []
    for wheel in sorted(wheels.glob("*.whl")):
        marker = site / f".unpacked-{wheel.name}"
        if marker.is_file():
            continue
        with zipfile.ZipFile(wheel) as archive:
            for info in archive.infolist():
                target = Path(archive.extract(info, site))
                mode = (info.external_attr >> 16) & 0o777
                if mode and not info.is_dir():
                    target.chmod(mode)
        marker.touch()
        done.append(wheel.name)
    return done


def set_instances(pbtxt: str, count: int) -> str:
    """A rendered config.pbtxt with its instance_group count replaced."""
    text, replaced = INSTANCES.subn(rf"\g<1>{count}", pbtxt)
    if replaced != 1:
        raise SystemExit(f"expected one instance_group in the config, found {replaced}")
    return text


def render(repository: Path, out: Path, preprocess: int, postprocess: int) -> Path:
    """A copy of ``repository`` with the python pre/post instance counts of this host."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(repository, out)
    for model, count in (("preprocess", preprocess), ("postprocess", postprocess)):
        config = out / model / "config.pbtxt"
        config.write_text(set_instances(config.read_text(), count))
    return out


def python_instances(repository: Path) -> int:
    """Python-backend instances in a rendered repository (text only: protobuf is not bundled)."""
    total = 0
    for config in repository.glob("*/config.pbtxt"):
        text = config.read_text()
        if re.search(r'backend:\s*"python"', text):
            total += sum(int(n) for n in re.findall(r"instance_group\s*\{\s*count:\s*(\d+)", text)) or 1
    return total


def backend_directory(site: Path, work: Path) -> Path:
    """The python backend with the stub for this Python beside it, as Triton expects."""
    root = site / "pytriton" / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise SystemExit(f"the Triton wheel has no python backend stub for Python {version}: run with 3.10-3.12")
    target = work / "backends"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(root / "backends" / "python", target / "python")
    shutil.copy2(stub, target / "python" / "triton_python_backend_stub")
    return target


def triton_command(site: Path, repository: Path, backends: Path, port: int, shm_bytes: int) -> list[str]:
    return [
        str(site / "pytriton" / "tritonserver" / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={backends}",
        f"--backend-config=python,shm-default-byte-size={shm_bytes}",
        f"--backend-config=python,shm-growth-byte-size={min(shm_bytes, 64 << 20)}",
        "--http-address=127.0.0.1",
        f"--http-port={port}",
        "--allow-grpc=false",
        "--allow-metrics=false",
        "--strict-readiness=true",
        "--exit-on-error=true",
    ]


def numpy_problem(version: str) -> str | None:
    """Why this host's numpy cannot serve, or None. Triton 2.51's python backend (nvidia-pytriton
    0.7.0) was built for numpy 1.x: under numpy 2 the stubs misread BYTES tensors and die on the
    first request."""
    if int(version.split(".")[0]) < 2:
        return None
    return (
        f"this Python has numpy {version}; the bundled Triton's python backend needs numpy < 2. Run check.py "
        "with a Python whose numpy is 1.x (e.g. python3 -m venv v && v/bin/pip install 'numpy<2', offline from "
        "a numpy 1.26 wheel if the host has no index)"
    )


def stub_python(site: Path, work: Path) -> Path:
    """A venv (no pip, so no ensurepip needed) whose site-packages sees the bundle and every package
    this interpreter sees (numpy). The python backend stub embeds libpython in isolated mode: it
    ignores PYTHONPATH and takes its prefix, and so its site-packages, from the first python3 on
    PATH. Returns the venv's bin folder."""
    venv = work / "venv"
    if not (venv / "bin" / "python3").exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    paths = [str(site), *(p for p in sys.path if p.endswith("-packages"))]
    (venv / "lib" / version / "site-packages" / "gpu-node-check.pth").write_text("\n".join(paths) + "\n")
    return venv / "bin"


def triton_env(site: Path, python_bin: Path) -> dict[str, str]:
    """The stub's embedded Python must find the bundled packages and this host's numpy; the
    allocator and thread settings are the served ones."""
    from matteserve import container  # bundled; imports nothing beyond the standard library

    env = container.serving_environment(os.environ)
    env["PATH"] = os.pathsep.join(filter(None, [str(python_bin), env.get("PATH")]))
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        filter(None, [str(site / "nvidia_pytriton.libs"), env.get("LD_LIBRARY_PATH")])
    )
    return env


def tree_cpu_seconds(root_pid: int, proc: Path = Path("/proc")) -> float:
    """User + system CPU seconds of ``root_pid`` and every live descendant (the python-backend
    stubs are tritonserver's children)."""
    stats: dict[int, tuple[int, float]] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        fields = text[text.rindex(")") + 2 :].split()
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
    wanted, total = {root_pid}, 0.0
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _) in stats.items():
            if ppid in wanted and pid not in wanted:
                wanted.add(pid)
                changed = True
    for pid in wanted:
        total += stats.get(pid, (0, 0.0))[1]
    return total


def encode_request(image: bytes, options: bytes) -> tuple[bytes, int]:
    """Triton's HTTP/REST binary-tensor request: a JSON header, then each BYTES tensor as
    4-byte little-endian length-prefixed elements."""
    tensors = [(IMAGE, image), (OPTIONS, options)]
    header = {
        "inputs": [
            {"name": name, "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": 4 + len(data)}}
            for name, data in tensors
        ],
        "outputs": [{"name": RESULT, "parameters": {"binary_data": True}}],
    }
    head = json.dumps(header).encode()
    body = head + b"".join(len(data).to_bytes(4, "little") + data for _, data in tensors)
    return body, len(head)


def decode_result(body: bytes, header_length: int) -> bytes:
    header = json.loads(body[:header_length])
    (output,) = [o for o in header["outputs"] if o["name"] == RESULT]
    data = body[header_length : header_length + output["parameters"]["binary_data_size"]]
    return data[4 : 4 + int.from_bytes(data[:4], "little")]


@dataclass(frozen=True)
class Measurement:
    size: str
    format: str
    images: int
    errors: int
    seconds: float
    images_per_s: float
    server_core_ms_per_image: float  # tritonserver + python backend processes
    client_core_ms_per_image: float  # this script's senders (not part of a serving node's cost)


def infer(port: int, image: bytes, fmt: str, timeout: float = 60.0) -> bytes:
    body, header_length = encode_request(image, json.dumps({"format": fmt}).encode())
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(
            "POST",
            f"/v2/models/{ENSEMBLE}/infer",
            body,
            {"Inference-Header-Content-Length": str(header_length), "Content-Type": "application/octet-stream"},
        )
        response = connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {payload[:300]!r}")
        return decode_result(payload, int(response.getheader("Inference-Header-Content-Length") or len(payload)))
    finally:
        connection.close()


def measure(
    port: int, server_pid: int, size: str, image: bytes, fmt: str, concurrency: int, seconds: float
) -> Measurement:
    """A closed loop of ``concurrency`` senders for ``seconds``; CPU read from /proc around it."""
    infer(port, image, fmt)  # warm: first requests load lazily initialised codecs
    done, errors, lock = [0], [0], threading.Lock()
    stop = time.monotonic() + seconds

    def sender() -> None:
        while time.monotonic() < stop:
            try:
                infer(port, image, fmt)
                with lock:
                    done[0] += 1
            except (OSError, RuntimeError):
                with lock:
                    errors[0] += 1

    cpu_before, client_before, start = tree_cpu_seconds(server_pid), time.process_time(), time.monotonic()
    threads = [threading.Thread(target=sender, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - start
    server_s, client_s = tree_cpu_seconds(server_pid) - cpu_before, time.process_time() - client_before
    images = done[0]
    return Measurement(
        size=size,
        format=fmt,
        images=images,
        errors=errors[0],
        seconds=round(took, 2),
        images_per_s=round(images / took, 2),
        server_core_ms_per_image=round(1000 * server_s / images, 2) if images else float("nan"),
        client_core_ms_per_image=round(1000 * client_s / images, 2) if images else float("nan"),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, process: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"tritonserver exited with {process.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    raise SystemExit(f"tritonserver was not ready within {timeout:.0f} s; see {log}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per size and format")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--concurrency", type=int, default=0, help="senders (default: 2 per CPU)")
    parser.add_argument("--repository", type=Path, default=HERE / "repository", help="as built by pack.py")
    parser.add_argument("--photos", type=Path, default=HERE / "photos")
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--out", type=Path, default=HERE / "result.json")
    args = parser.parse_args(argv)
    import numpy

    if problem := numpy_problem(numpy.__version__):
        print(f"error: {problem}", file=sys.stderr)
        return 2

    site = args.work / "site"
    extract_wheels(HERE / "wheels", site)
    sys.path.insert(0, str(site))
    from matteserve import container  # bundled; imports nothing beyond the standard library

    cores = container.cpu_cores()
    pre, post = container.gpu_python_instances(cores)
    repository = render(args.repository, args.work / "repository", pre, post)
    shm = container.python_shm_bytes(python_instances(repository), container.dev_shm_bytes())
    port, log = free_port(), args.work / "tritonserver.log"
    command = triton_command(site, repository, backend_directory(site, args.work), port, shm)
    env = triton_env(site, stub_python(site, args.work))
    print(f"CPU budget {container.cpu_budget():g} -> {cores} cores: preprocess x{pre}, postprocess x{post}")
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_ready(port, process, 300, log)
            results = [
                measure(
                    port, process.pid, photo.stem, photo.read_bytes(), fmt, args.concurrency or 2 * cores, args.seconds
                )
                for photo in sorted(args.photos.glob("*.jpg"))
                for fmt in args.formats.split(",")
            ]
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
    print(f"{'photo':18} {'format':6} {'images/s':>9} {'core-ms/img':>12} {'errors':>7}")
    for m in results:
        print(f"{m.size:18} {m.format:6} {m.images_per_s:9.1f} {m.server_core_ms_per_image:12.1f} {m.errors:7d}")
    report = {"cores": cores, "cpu_budget": container.cpu_budget(), "preprocess": pre, "postprocess": post}
    args.out.write_text(json.dumps(report | {"results": [asdict(m) for m in results]}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 1 if any(m.errors or not m.images for m in results) else 0


if __name__ == "__main__":
    sys.exit(main())
