"""Write a complete Triton model repository from a plan and a prepared ONNX."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from matteserve import __version__, contract
from matteserve.build import configs, locks
from matteserve.build.configs import ServingPlan
from matteserve.model_repository import ADAPTERS
from matteserve.pipeline.decode import ImageLimits
from matteserve.runtimes import Precision, Runtime, int8_files

logger = logging.getLogger(__name__)

MANIFEST = "matteserve-build.json"


def adapters_digest() -> str:
    """A digest of the python-backend adapters, so a repository built by older code is noticed."""
    digest = hashlib.sha256()
    for path in sorted(ADAPTERS.glob("*/1/model.py")):
        digest.update(path.relative_to(ADAPTERS).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def render(plan: ServingPlan) -> dict[str, str]:
    """Model name -> config.pbtxt text, for the CPU target."""
    return {
        contract.PREPROCESS: configs.to_pbtxt(configs.preprocess_config(plan)),
        contract.MATTING: configs.to_pbtxt(configs.matting_config(plan)),
        contract.POSTPROCESS: configs.to_pbtxt(configs.postprocess_config(plan)),
        contract.ENSEMBLE: configs.to_pbtxt(configs.ensemble_config(plan)),
    }


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A fresh folder next to ``out`` that replaces ``out`` whole when the block succeeds and is
    removed when it fails, so a failed build never leaves a half-written repository that Triton
    would try to load. The swap holds ``out``'s lock (:func:`locks.exclusive`): two processes
    writing one repository on a shared volume replace it one after the other, never interleaved."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield staging
        with locks.exclusive(out):
            swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def swap_in(staging: Path, out: Path) -> None:
    """Replace ``out`` by ``staging`` (same file system) with two renames; the caller holds
    ``out``'s lock."""
    old = staging.with_name(staging.name + ".old")
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def fill(plan: ServingPlan, onnx: Path | None, folder: Path, manifest: dict[str, Any]) -> None:
    """Write every model's config, its adapter, the ONNX and the build manifest into ``folder``."""
    for model, pbtxt in render(plan).items():
        (folder / model / "1").mkdir(parents=True)
        (folder / model / "config.pbtxt").write_text(pbtxt)
        adapter = ADAPTERS / model / "1" / "model.py"
        if adapter.is_file():
            shutil.copy2(adapter, folder / model / "1" / "model.py")
    if onnx is not None:  # None: the stand-in matting step, which has no model file
        served = folder / contract.MATTING / "1" / plan.onnx_filename
        shutil.copy2(onnx, served)
        if plan.precision is Precision.INT8:  # the quantised model the build made beside the ONNX
            for source, target in zip(int8_files(onnx), int8_files(served), strict=True):
                shutil.copy2(source, target)
    stamp = {"matteserve": __version__, "adapters_sha256": adapters_digest(), **manifest}
    (folder / MANIFEST).write_text(json.dumps(stamp, indent=2) + "\n")


def write(plan: ServingPlan, onnx: Path | None, out: Path, manifest: dict[str, Any]) -> Path:
    """Write the repository and swap it in whole (see :func:`staged`)."""
    with staged(out) as staging:
        fill(plan, onnx, staging, manifest)
    logger.info("wrote the %s model repository to %s", plan.target.value, out)
    return out


def python_instances(repository: Path) -> int:
    """Python-backend model instances Triton starts for ``repository`` (each has its own shm region)."""
    total = 0
    for path in sorted(repository.glob("*/config.pbtxt")):
        cfg = configs.from_pbtxt(path.read_text())
        if cfg.backend == "python":
            total += sum(max(1, g.count) for g in cfg.instance_group) or 1
    return total


def read_manifest(repository: Path) -> dict[str, Any] | None:
    path = repository / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def choice_holds(manifest: dict[str, Any], cpuinfo: str | None = None) -> bool:
    """Whether a CPU build's runtime choice still holds here: made on a CPU with this one's BF16 and
    VNNI (a repository built elsewhere, on a shared volume or a copied cache, was gated and measured
    for that CPU), and by today's parity gate (a build an older, looser gate let through is redone)."""
    from matteserve.build.runtime_choice import Capabilities, gate_limits

    choice = manifest.get("runtime_choice")
    if choice is None:  # GPU and stand-in builds choose no CPU runtime
        return True
    built, here = choice.get("capabilities", {}), Capabilities.detect(cpuinfo)
    same_cpu = (built.get("bf16"), built.get("vnni")) == (here.bf16, here.vnni)
    return same_cpu and choice.get("gate_limits") == gate_limits()


def is_current(
    repository: Path,
    limits: ImageLimits | None = None,
    max_batch_size: int | None = None,
    runtime: Runtime | None = None,
    precision: Precision | None = None,
) -> bool:
    """Whether ``repository`` was built by this matteserve's adapters, for this CPU, with these limits
    and (when given) this max batch size, runtime and precision."""
    manifest = read_manifest(repository)
    if manifest is None or manifest.get("adapters_sha256") != adapters_digest():
        return False
    if not choice_holds(manifest):
        return False
    chosen = manifest.get("runtime_choice", {})
    if any(
        asked is not None and chosen.get(key) != asked.value
        for key, asked in (("runtime", runtime), ("precision", precision))
    ):
        return False
    if limits is not None and manifest.get("limits") != asdict(limits):
        return False
    return max_batch_size is None or manifest.get("max_batch_size") == max_batch_size
