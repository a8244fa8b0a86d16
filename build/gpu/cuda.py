"""The few CUDA runtime calls the engine runner needs, through ctypes on ``libcudart``.

TensorRT's Python API takes device pointers but allocates nothing; rather than depend on PyTorch,
CuPy or one of cuda-python's changing module layouts, this binds the stable C API of the
``libcudart.so.12`` that the ``tensorrt`` wheels already install (``nvidia-cuda-runtime-cu12``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import sys
from pathlib import Path

from matteserve.errors import ModelError

H2D, D2H = 1, 2  # cudaMemcpyKind
_CC_MAJOR, _CC_MINOR = 75, 76  # cudaDevAttrComputeCapabilityMajor / Minor


def _candidates() -> list[str]:
    found = [ctypes.util.find_library("cudart") or ""]
    for site in sys.path:
        found += sorted(glob.glob(str(Path(site) / "nvidia" / "cuda_runtime" / "lib" / "libcudart.so*")))
    return [*filter(None, found), "libcudart.so.12", "libcudart.so"]


def _load() -> ctypes.CDLL:
    for name in _candidates():
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        return lib
    raise ModelError("no CUDA runtime (libcudart.so) found: install nvidia-cuda-runtime-cu12 or the CUDA toolkit")


_lib: ctypes.CDLL | None = None


def lib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        _lib = _load()
    return _lib


def check(status: int, what: str) -> None:
    if status != 0:
        raise ModelError(f"CUDA {what} failed: {lib().cudaGetErrorString(status).decode()} ({status})")


def compute_capability(device: int = 0) -> str:
    """``"major.minor"`` of GPU ``device``, as Triton's ``cc_model_filenames`` keys it."""
    major, minor = ctypes.c_int(), ctypes.c_int()
    check(lib().cudaDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, device), "cudaDeviceGetAttribute")
    check(lib().cudaDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, device), "cudaDeviceGetAttribute")
    return f"{major.value}.{minor.value}"


# cudaDeviceProp begins with ``char name[256]`` in every CUDA release; the rest of the struct grows
# from release to release, so it is read into a buffer far larger than any of them.
_PROP_BUFFER_BYTES = 16384
_NAME_BYTES = 256


def device_name(device: int = 0) -> str:
    """The GPU's model name, e.g. ``"NVIDIA H100 80GB HBM3"``."""
    props = ctypes.create_string_buffer(_PROP_BUFFER_BYTES)
    # CUDA 12's headers map cudaGetDeviceProperties to the _v2 symbol; older runtimes have only the first.
    get = getattr(lib(), "cudaGetDeviceProperties_v2", None) or lib().cudaGetDeviceProperties
    check(get(props, device), "cudaGetDeviceProperties")
    return props.raw[:_NAME_BYTES].split(b"\0", 1)[0].decode(errors="replace")


class DeviceBuffer:
    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.ptr = ctypes.c_void_p()
        check(lib().cudaMalloc(ctypes.byref(self.ptr), ctypes.c_size_t(nbytes)), "cudaMalloc")

    def upload_from(self, host_address: int, nbytes: int) -> None:
        check(lib().cudaMemcpy(self.ptr, ctypes.c_void_p(host_address), ctypes.c_size_t(nbytes), H2D), "upload")

    def download_into(self, host_address: int, nbytes: int) -> None:
        check(lib().cudaMemcpy(ctypes.c_void_p(host_address), self.ptr, ctypes.c_size_t(nbytes), D2H), "download")

    def free(self) -> None:
        if self.ptr:
            lib().cudaFree(self.ptr)
            self.ptr = ctypes.c_void_p()


class Stream:
    def __init__(self) -> None:
        self.handle = ctypes.c_void_p()
        check(lib().cudaStreamCreate(ctypes.byref(self.handle)), "cudaStreamCreate")

    def synchronize(self) -> None:
        check(lib().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def destroy(self) -> None:
        if self.handle:
            lib().cudaStreamDestroy(self.handle)
            self.handle = ctypes.c_void_p()
