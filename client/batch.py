"""``matteserve remove``: push many images through the gateway and lose none.

Each input maps to one output path inside OUTDIR (never outside it). An output is written to a
temporary file and renamed into place, so an output that exists is complete; a rerun skips those and
does only what is missing. Every failure goes to a JSON-lines report.
"""

from __future__ import annotations

import asyncio
import glob
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from matteserve.client.aio import AsyncClient
from matteserve.client.errors import RemoteError
from matteserve.options import OutputFormat

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
EXTENSIONS = {
    OutputFormat.PNG: ".png",
    OutputFormat.MASK: ".png",
    OutputFormat.WEBP: ".webp",
    OutputFormat.JPEG: ".jpg",
    OutputFormat.RAW: ".raw",
}
PARTIAL = ".partial"
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Job:
    source: Path
    output: Path  # inside OUTDIR


@dataclass(frozen=True)
class Failure:
    file: str
    status: str  # a gRPC status name, or READ_ERROR / WRITE_ERROR / NOT_FOUND / OUTPUT_COLLISION / UNSAFE_NAME
    message: str

    def to_json(self) -> str:
        return json.dumps({"file": self.file, "status": self.status, "message": self.message})


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _expand(spec: str, outdir: Path) -> Iterable[tuple[Path, PurePath]] | Failure:
    """One INPUT -> (source file, name relative to OUTDIR before the extension is set)."""
    if spec.startswith("@"):
        return _read_list(Path(spec[1:]))
    path = Path(spec)
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if _is_image(p) and not p.resolve().is_relative_to(outdir))
        if not found:
            return Failure(spec, "NOT_FOUND", f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        return [(p, p.relative_to(path)) for p in found]
    if path.is_file():
        return [(path, PurePath(path.name))]
    if _GLOB_CHARS & set(spec):
        # Names keep their folders below the glob's first wildcard part, as for a folder input.
        parts = Path(spec).parts
        fixed = next(i for i, part in enumerate(parts) if _GLOB_CHARS & set(part))
        base = Path(*parts[:fixed]) if fixed else Path()
        found = sorted(Path(p) for p in glob.glob(spec, recursive=True) if _is_image(Path(p)))
        if not found:
            return Failure(spec, "NOT_FOUND", "no image matches this glob")
        return [(p, p.relative_to(base)) for p in found]
    return Failure(spec, "NOT_FOUND", "no such file or folder, and no image matches it as a glob")


def _read_list(list_file: Path) -> list[tuple[Path, PurePath]] | Failure:
    """A list file: one path per line, relative to the list file's folder; '#' starts a comment."""
    try:
        lines = list_file.read_text().splitlines()
    except OSError as e:
        return Failure(str(list_file), "READ_ERROR", f"cannot read the list file: {e}")
    out = []
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        given = PurePath(text)
        source = given if given.is_absolute() else list_file.parent / given
        # Only a plain relative path keeps its folders in OUTDIR; anything else keeps just its name.
        name = given if not given.is_absolute() and ".." not in given.parts else PurePath(given.name)
        out.append((Path(source), name))
    return out


def output_path(outdir: Path, name: PurePath, fmt: OutputFormat) -> Path | None:
    """OUTDIR/name with the format's extension, or None if it would land outside OUTDIR."""
    parts = [p for p in name.parts if p not in ("", ".", "..", "/", "\\") and not PurePath(p).anchor]
    if not parts:
        return None
    target = outdir.joinpath(*parts).with_suffix(EXTENSIONS[fmt])
    root = outdir.resolve()
    # resolve() follows symlinks already inside OUTDIR, which could point anywhere.
    return target if target.resolve().is_relative_to(root) and target.resolve() != root else None


def plan(inputs: list[str], outdir: Path, fmt: OutputFormat) -> Plan:
    """Every input file and its output; duplicates once, and name collisions reported, not overwritten."""
    result = Plan()
    seen_sources: set[Path] = set()
    claimed: dict[Path, Path] = {}
    outdir_resolved = outdir.resolve()
    for spec in inputs:
        expanded = _expand(spec, outdir_resolved)
        if isinstance(expanded, Failure):
            result.failures.append(expanded)
            continue
        for source, name in expanded:
            key = source.resolve()
            if key in seen_sources:
                continue
            seen_sources.add(key)
            target = output_path(outdir, name, fmt)
            if target is None:
                result.failures.append(Failure(str(source), "UNSAFE_NAME", f"{name} would be written outside {outdir}"))
            elif target in claimed:
                message = f"{target} is already the output of {claimed[target]}; pass their folders instead"
                result.failures.append(Failure(str(source), "OUTPUT_COLLISION", message))
            else:
                claimed[target] = source
                result.jobs.append(Job(source, target))
    return result


def atomic_write(target: Path, data: bytes) -> None:
    """Write to a temporary file beside ``target``, then rename: ``target`` is whole or absent."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}{PARTIAL}")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_partials(outdir: Path) -> int:
    """Temporary files left by a run that was killed mid-write."""
    count = 0
    for tmp in outdir.rglob(f".*{PARTIAL}"):
        tmp.unlink(missing_ok=True)
        count += 1
    return count


@dataclass(frozen=True)
class Settings:
    format: OutputFormat = OutputFormat.PNG
    background: str | None = None
    quality: int | None = None
    model: str | None = None
    concurrency: int = 4


@dataclass
class Outcome:
    done: int = 0
    skipped: int = 0
    failures: list[Failure] = field(default_factory=list)


async def run(
    jobs: list[Job],
    client: AsyncClient,
    settings: Settings,
    on_done: Callable[[], None] = lambda: None,
) -> Outcome:
    """Process ``jobs`` with ``settings.concurrency`` requests in flight; one failure never stops the rest."""
    outcome = Outcome()
    queue: asyncio.Queue[Job] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def worker() -> None:
        while not queue.empty():
            job = queue.get_nowait()
            failure = await _one(job, client, settings)
            if failure is None:
                outcome.done += 1
            else:
                outcome.failures.append(failure)
            on_done()

    await asyncio.gather(*(worker() for _ in range(max(1, settings.concurrency))))
    return outcome


async def _one(job: Job, client: AsyncClient, settings: Settings) -> Failure | None:
    try:
        data = await asyncio.to_thread(job.source.read_bytes)
    except OSError as e:
        return Failure(str(job.source), "READ_ERROR", str(e))
    try:
        result = await client.remove(
            data, format=settings.format, background=settings.background, quality=settings.quality, model=settings.model
        )
    except RemoteError as e:
        return Failure(str(job.source), e.code.name, str(e.args[0]))
    try:
        await asyncio.to_thread(atomic_write, job.output, result.data)
    except OSError as e:
        return Failure(str(job.source), "WRITE_ERROR", str(e))
    return None


def write_report(path: Path, failures: list[Failure]) -> None:
    """The report lists this run's failures; a run without any removes an old report."""
    if not failures:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "".join(f.to_json() + "\n" for f in failures).encode())
