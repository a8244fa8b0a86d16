"""The engine store: TensorRT engines and timing caches shared by every node that mounts it.

One entry per model and :attr:`stamp.Runtime.key` (GPU model, compute capability, TensorRT release):
``<engines>/<model>/<key>/`` holds ``model.plan``, its stamp ``model.plan.json`` and the ONNX graph
TensorRT parsed, ``model.onnx``. Timing caches are per key, whatever the model. Callers hold the
entry's lock (:func:`matteserve.build.locks.exclusive`) while they read or replace it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from matteserve.build import repository, weights
from matteserve.build.gpu import stamp
from matteserve.errors import ModelError
from matteserve.zoo import ModelSpec

logger = logging.getLogger(__name__)

ENGINES_ENV = "MATTESERVE_ENGINES"
PLAN, GRAPH = "model.plan", "model.onnx"


def entry(engines: Path, spec: ModelSpec, runtime: stamp.Runtime) -> Path:
    return engines / spec.name / runtime.key


def timing_cache(engines: Path, runtime: stamp.Runtime) -> Path:
    """One per GPU model and TensorRT release: a cache from another GPU or release is not valid."""
    return engines / "timing-caches" / f"{runtime.key}.cache"


def default_engines(out: Path) -> Path:
    """``$MATTESERVE_ENGINES``, else ``engines/`` beside the repository ``out``."""
    return Path(os.environ[ENGINES_ENV]) if os.environ.get(ENGINES_ENV) else out.parent / "engines"


def find(folder: Path, runtime: stamp.Runtime, source_sha256: str, recipe: dict[str, Any]) -> stamp.EngineStamp | None:
    """The entry's engine when it fits this GPU and TensorRT, was made from this model with these
    build options and its files are whole; else None (with the reason logged)."""
    path = folder / (PLAN + stamp.STAMP_SUFFIX)
    if not path.is_file():
        return None
    try:
        found = stamp.EngineStamp.read(path)
    except ModelError as e:
        logger.warning("%s", e)
        return None
    why = (
        "another GPU or TensorRT"
        if not found.matches(runtime)
        else "another model"
        if found.source_sha256 != source_sha256
        else "other build options"
        if any(found.options.get(k) != v for k, v in recipe.items())
        else "a missing file"
        if not ((folder / PLAN).is_file() and (folder / GRAPH).is_file())
        else "another graph"
        if weights.file_digest(folder / GRAPH) != found.graph_sha256
        else None
    )
    if why:
        logger.info("the engine in %s was built for %s: rebuilding", folder, why)
        return None
    return found


def put(folder: Path, plan: Path, graph: Path, engine_stamp: stamp.EngineStamp) -> None:
    """Replace the entry whole (staged beside it, then swapped in)."""
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        shutil.copy2(plan, staging / PLAN)
        shutil.copy2(graph, staging / GRAPH)
        engine_stamp.write(staging)
        repository.swap_in(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
