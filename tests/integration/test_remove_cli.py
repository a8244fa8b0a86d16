"""``matteserve remove`` end to end: outputs, the failure report, and runs that are cut short."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from matteserve.gateway import GatewayProcess
from matteserve.tritonserver import TritonServer

from ..conftest import start_gateway, start_triton  # type: ignore[import-not-found]


def cli(gw: GatewayProcess, *args: str | Path) -> list[str]:
    return [sys.executable, "-m", "matteserve.cli", "remove", "--gateway", gw.target, "--no-progress", *map(str, args)]


def write_photos(folder: Path, make_photo: Callable[..., bytes], count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"photo{i:02d}.jpg"
        path.write_bytes(make_photo(240 + 4 * i, 200))
        paths.append(path)
    return paths


def assert_cutout_of(output: Path, source: Path) -> None:
    with Image.open(output) as out, Image.open(source) as src:
        assert out.format == "PNG"
        assert out.mode == "RGBA"
        assert out.size == src.size
        out.load()  # the whole file decodes: nothing half-written


def snapshot(outdir: Path) -> dict[Path, tuple[int, int]]:
    """Output -> (inode, mtime): a file written again gets a new inode (temp file + rename)."""
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in outdir.rglob("*.png")}


def wait_for_outputs(outdir: Path, count: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(list(outdir.rglob("*.png"))) < count:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_every_input_kind_is_written_inside_outdir_and_each_failure_reported(
    gateway: GatewayProcess, tmp_path: Path, make_photo: Callable[..., bytes]
) -> None:
    src = tmp_path / "src"
    write_photos(src / "trip" / "day1", make_photo, 2)
    (src / "trip" / "notes.txt").write_text("not an image, and not an image suffix: ignored")
    (src / "trip" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    glob_dir = write_photos(tmp_path / "globbed", make_photo, 1)[0].parent
    listed = write_photos(tmp_path / "elsewhere", make_photo, 1)[0].rename(tmp_path / "elsewhere" / "listed.jpg")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "todo.txt").write_text(f"# from a list\n../elsewhere/{listed.name}\n")
    out = tmp_path / "out"

    args = [src / "trip", f"{glob_dir}/*.jpg", f"@{tmp_path / 'lists' / 'todo.txt'}", tmp_path / "missing.jpg"]
    run = subprocess.run(cli(gateway, *args, "-o", out, "-c", "2"), capture_output=True, text=True, timeout=300)

    assert run.returncode == 1, run.stderr
    expected = {
        out / "day1" / "photo00.png": src / "trip" / "day1" / "photo00.jpg",
        out / "day1" / "photo01.png": src / "trip" / "day1" / "photo01.jpg",
        out / "photo00.png": glob_dir / "photo00.jpg",
        out / "listed.png": listed,  # a list entry with '..' keeps only its name
    }
    assert sorted(snapshot(out)) == sorted(expected)
    for output, source in expected.items():
        assert_cutout_of(output, source)
    report = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    by_file = {r["file"]: r for r in report}
    assert set(by_file) == {str(src / "trip" / "broken.jpg"), str(tmp_path / "missing.jpg")}
    assert by_file[str(src / "trip" / "broken.jpg")]["status"] == "INVALID_ARGUMENT"
    assert "JPEG header is corrupt" in by_file[str(src / "trip" / "broken.jpg")]["message"]
    assert by_file[str(tmp_path / "missing.jpg")]["status"] == "NOT_FOUND"


def test_the_glob_and_the_list_file_collide_on_one_name_and_the_second_is_reported(
    gateway: GatewayProcess, tmp_path: Path, make_photo: Callable[..., bytes]
) -> None:
    a, b = write_photos(tmp_path / "a", make_photo, 1)[0], write_photos(tmp_path / "b", make_photo, 1)[0]
    out = tmp_path / "out"
    run = subprocess.run(cli(gateway, a, b, "-o", out), capture_output=True, text=True, timeout=300)
    assert run.returncode == 1
    assert list(snapshot(out)) == [out / "photo00.png"]
    (failure,) = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert failure["status"] == "OUTPUT_COLLISION"


@pytest.fixture
def interruptible() -> Iterator[None]:
    """Ctrl-C reaches the CLI started below. A suite run as a shell's background job starts with SIGINT
    ignored, and an ignored signal stays ignored across exec, so the CLI would rightly ignore it too;
    a handled one is reset to the default in the child."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("interruptible")
def test_an_interrupted_run_resumes_and_writes_nothing_twice(
    gateway: GatewayProcess, tmp_path: Path, make_photo: Callable[..., bytes]
) -> None:
    sources = write_photos(tmp_path / "src", make_photo, 8)
    out = tmp_path / "out"
    first = subprocess.Popen(cli(gateway, tmp_path / "src", "-o", out, "-c", "2"), stderr=subprocess.PIPE)
    wait_for_outputs(out, 2, first)
    first.send_signal(signal.SIGINT)
    assert first.wait(60) == 130
    done_before = snapshot(out)
    assert 2 <= len(done_before) < 8
    assert not list(out.rglob("*.partial")), "an interrupted run leaves no temporary files behind"

    rerun = subprocess.run(cli(gateway, tmp_path / "src", "-o", out), capture_output=True, text=True, timeout=300)

    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(done_before)} already done, {8 - len(done_before)} to do" in rerun.stderr
    after = snapshot(out)
    assert {p: after[p] for p in done_before} == done_before  # not one of them rewritten
    for source in sources:
        assert_cutout_of(out / source.with_suffix(".png").name, source)
    assert not (out / "failures.jsonl").exists()


@pytest.fixture
def own_triton(repository: Path, tmp_path: Path) -> Iterator[TritonServer]:
    server = start_triton(repository, tmp_path)
    yield server
    server.stop()


def test_triton_restarted_during_a_run_ends_with_every_output_present_and_valid(
    own_triton: TritonServer, tmp_path: Path, make_photo: Callable[..., bytes]
) -> None:
    sources = write_photos(tmp_path / "src", make_photo, 8)
    out = tmp_path / "out"
    gw = start_gateway([own_triton.cfg.grpc_url], tmp_path)
    try:
        run = subprocess.Popen(cli(gw, tmp_path / "src", "-o", out, "-c", "2"), stderr=subprocess.PIPE)
        wait_for_outputs(out, 2, run)
        own_triton.kill()
        time.sleep(1.0)
        own_triton.start()
        code = run.wait(300)
        if code != 0:  # the run gave up on some images while Triton was away: a rerun finishes them
            rerun = subprocess.run(cli(gw, tmp_path / "src", "-o", out), capture_output=True, text=True, timeout=300)
            assert rerun.returncode == 0, rerun.stderr
    finally:
        gw.stop()
    assert len(snapshot(out)) == len(sources)
    for source in sources:
        assert_cutout_of(out / source.with_suffix(".png").name, source)
    assert not list(out.rglob("*.partial"))
    assert not (out / "failures.jsonl").exists()
    assert os.listdir(out)
