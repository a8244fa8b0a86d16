"""What the container this process runs in may use: its CPU budget and its /dev/shm.

A pod's CPU limit is a CFS quota, not a number of visible cores: on a 224-thread host a 4-CPU pod
still sees 224 cores in ``os.cpu_count()``. Instance counts and python-backend shared memory are
sized from what the container may actually use, read when it starts.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from matteserve.errors import MatteserveError

logger = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
CPUS_ENV = "MATTESERVE_CPUS"

# Each python-backend model instance starts with its own shared-memory region of this size: large
# enough for a 40-megapixel RGB image without growth steps, when /dev/shm has room for it.
SHM_WANTED_BYTES = 256 * 1024 * 1024
SHM_SMALLEST_BYTES = 16 * 1024 * 1024
# The regions grow on demand; this share of /dev/shm is left for that growth and Triton's own use.
SHM_SHARE = 0.5
MIB = 1024 * 1024

# glibc's malloc gives blocks of 128 KiB and more back to the kernel when they are freed (its mmap
# and trim thresholds), so each image's multi-megabyte buffers (decoded pixels, the upsampled
# matte, the encoded file) were mapped afresh for every request, and the kernel faulted in and
# zeroed every page again: a third of a 1024 px cutout's postprocess CPU, 40% at 2048 px. Blocks up
# to 32 MiB (glibc's largest mmap threshold: an 8-megapixel RGBA image) stay in the heap, and the
# heap is trimmed only past 256 MiB of free space, so a process keeps what its largest requests
# needed and reuses it. The trim threshold only applies to the main heap: threads' arenas (64 MiB
# heaps) never reach it and keep their free blocks, so a many-threaded process (tritonserver, the
# gateway) is held to two arenas (24 threads each freeing a 30 MiB buffer kept 757 MiB otherwise;
# two arenas cost no throughput in the stand-in stack). These are glibc's environment aliases: the
# GLIBC_TUNABLES form does not reach grandchildren intact (glibc 2.36 cuts the variable at its
# first ':' as it parses it, so tritonserver would pass only the first setting on to the stubs).
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * MIB),
    "MALLOC_TRIM_THRESHOLD_": str(256 * MIB),
    "MALLOC_ARENA_MAX": "2",
}


# mallopt(3)'s parameter for each MALLOC_ENV variable (glibc's malloc.h), and its GLIBC_TUNABLES name.
_MALLOPT = {
    "MALLOC_TRIM_THRESHOLD_": (-1, "glibc.malloc.trim_threshold"),
    "MALLOC_MMAP_THRESHOLD_": (-3, "glibc.malloc.mmap_threshold"),
    "MALLOC_ARENA_MAX": (-8, "glibc.malloc.arena_max"),
}


def tune_allocator(env: Mapping[str, str]) -> list[str]:
    """Apply :data:`MALLOC_ENV` to this process where ``env`` (its environment at start, which glibc
    read then) did not set it, in either form: for a server started by hand, outside the launchers
    and images. Returns the settings applied. The arena cap holds for the threads started after the
    call."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return []
    tunables = env.get("GLIBC_TUNABLES", "")
    applied = []
    for name, value in MALLOC_ENV.items():
        param, tunable = _MALLOPT[name]
        if name not in env and f"{tunable}=" not in tunables and mallopt(param, int(value)) == 1:
            applied.append(f"{name}={value}")
    return applied


def serving_environment(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for a serving process (tritonserver and its python-backend stubs, which inherit it):
    glibc's allocator keeps image-sized blocks (:data:`MALLOC_ENV`, each unless ``env`` sets it);
    one model instance does not start a thread per core for numpy/BLAS."""
    return {**MALLOC_ENV, "OMP_NUM_THREADS": "1", **env}


def _quota_v2(root: Path) -> float | None:
    """cgroup v2 ``cpu.max``: ``"<quota> <period>"`` or ``"max <period>"`` (no limit)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _quota_v1(root: Path) -> float | None:
    """cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; a quota of -1 is no limit."""
    for folder in (root / "cpu", root / "cpu,cpuacct", root):
        try:
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            period = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota <= 0 or period <= 0 else quota / period
    return None


def visible_cpus() -> int:
    """The cores this process may be scheduled on (cpusets included)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_budget(root: Path = CGROUP_ROOT, env: Mapping[str, str] | None = None) -> float:
    """CPUs this container may use: ``MATTESERVE_CPUS`` when set (it wins), else the cgroup quota
    (v2, then v1), capped by the cores it may be scheduled on."""
    env = os.environ if env is None else env
    if explicit := env.get(CPUS_ENV, "").strip():
        try:
            value = float(explicit)
        except ValueError:
            value = 0.0
        if value <= 0:
            raise MatteserveError(f"{CPUS_ENV}={explicit!r}: give the CPUs this container may use, e.g. 4 or 2.5")
        return value
    quota = _quota_v2(root)
    if quota is None:
        quota = _quota_v1(root)
    cores = float(visible_cpus())
    return min(quota, cores) if quota is not None else cores


def cpu_cores(root: Path = CGROUP_ROOT, env: Mapping[str, str] | None = None) -> int:
    """Whole CPUs to size instance counts with: the budget rounded down, at least 1."""
    return max(1, math.floor(cpu_budget(root, env)))


def gpu_python_instances(cores: int) -> tuple[int, int]:
    """(preprocess, postprocess) python instances on a GPU node: the GPU runs the model and the
    cores decode and encode; postprocess (alpha upsample + encode) is the heavier of the two."""
    return max(1, cores // 3), max(1, cores // 2)


def python_shm_bytes(instances: int, shm_total: int) -> int:
    """The python backend's ``shm-default-byte-size``: every instance's starting region together
    stays within :data:`SHM_SHARE` of /dev/shm (``shm_total`` bytes), at most
    :data:`SHM_WANTED_BYTES` each, in whole MiB."""
    each = min(SHM_WANTED_BYTES, int(shm_total * SHM_SHARE) // max(1, instances))
    each = each // MIB * MIB
    if each < SHM_SMALLEST_BYTES:
        logger.warning(
            "/dev/shm (%d MiB) is too small for %d python-backend instances: give the container a larger "
            "/dev/shm (Kubernetes: a Memory emptyDir; Docker: --shm-size) or fewer CPUs",
            shm_total // MIB,
            instances,
        )
        each = SHM_SMALLEST_BYTES
    return each


def dev_shm_bytes(path: Path = Path("/dev/shm")) -> int:
    return shutil.disk_usage(path).total
