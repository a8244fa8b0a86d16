"""``matteserve remove`` planning and writing, without a server: names, collisions, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path, PurePath

import pytest

from matteserve.client.batch import Failure, atomic_write, output_path, plan, remove_stale_partials, write_report
from matteserve.options import OutputFormat


def touch(path: Path, data: bytes = b"jpeg") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def rel(outdir: Path, paths: list[Path]) -> list[str]:
    return sorted(str(p.relative_to(outdir)) for p in paths)


def test_folders_are_searched_recursively_for_images_only(tmp_path: Path) -> None:
    for name in ("a.jpg", "sub/b.PNG", "sub/deeper/c.webp", "notes.txt", "sub/d.tiff"):
        touch(tmp_path / "in" / name)
    result = plan([str(tmp_path / "in")], tmp_path / "out", OutputFormat.PNG)
    assert result.failures == []
    assert rel(tmp_path / "out", [j.output for j in result.jobs]) == [
        "a.png",
        "sub/b.png",
        "sub/d.png",
        "sub/deeper/c.png",
    ]


def test_globs_keep_the_folders_below_their_first_wildcard(tmp_path: Path) -> None:
    touch(tmp_path / "in" / "x" / "1.jpg")
    touch(tmp_path / "in" / "y" / "2.jpg")
    result = plan([f"{tmp_path}/in/*/*.jpg"], tmp_path / "out", OutputFormat.JPEG)
    assert rel(tmp_path / "out", [j.output for j in result.jobs]) == ["x/1.jpg", "y/2.jpg"]


def test_list_files_cannot_send_outputs_outside_outdir(tmp_path: Path) -> None:
    inside = touch(tmp_path / "lists" / "pics" / "in.jpg")
    up = touch(tmp_path / "up.jpg")
    absolute = touch(tmp_path / "abs" / "abs.jpg")
    listing = tmp_path / "lists" / "todo.txt"
    listing.write_text(f"pics/in.jpg\n../up.jpg\n{absolute}\n# comment\n\n")
    result = plan([f"@{listing}"], tmp_path / "out", OutputFormat.WEBP)
    outputs = {j.source.resolve(): j.output for j in result.jobs}
    assert outputs[inside.resolve()] == tmp_path / "out" / "pics" / "in.webp"
    assert outputs[up.resolve()] == tmp_path / "out" / "up.webp"
    assert outputs[absolute.resolve()] == tmp_path / "out" / "abs.webp"


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "a/../../b", "..", "."])
def test_no_name_resolves_outside_outdir(tmp_path: Path, name: str) -> None:
    target = output_path(tmp_path / "out", PurePath(name), OutputFormat.PNG)
    if target is not None:
        assert target.resolve().is_relative_to((tmp_path / "out").resolve())


def test_a_symlink_inside_outdir_that_points_outside_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "out" / "sub")
    touch(tmp_path / "in" / "sub" / "x.jpg")
    result = plan([str(tmp_path / "in")], tmp_path / "out", OutputFormat.PNG)
    assert result.jobs == []
    assert [f.status for f in result.failures] == ["UNSAFE_NAME"]


def test_two_inputs_for_one_output_are_reported_not_overwritten_and_duplicates_run_once(tmp_path: Path) -> None:
    a = touch(tmp_path / "a" / "same.jpg")
    b = touch(tmp_path / "b" / "same.png")
    result = plan([str(a), str(b), str(a), str(tmp_path / "nothing-*.jpg")], tmp_path / "out", OutputFormat.PNG)
    assert [j.source for j in result.jobs] == [a]
    assert [(f.file, f.status) for f in result.failures] == [
        (str(b), "OUTPUT_COLLISION"),
        (str(tmp_path / "nothing-*.jpg"), "NOT_FOUND"),
    ]


def test_images_already_inside_outdir_are_not_inputs(tmp_path: Path) -> None:
    touch(tmp_path / "photos" / "a.jpg")
    touch(tmp_path / "photos" / "cutouts" / "a.png")
    result = plan([str(tmp_path / "photos")], tmp_path / "photos" / "cutouts", OutputFormat.PNG)
    assert [j.source.name for j in result.jobs] == ["a.jpg"]


def test_atomic_write_leaves_the_whole_file_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "deep" / "x.png"
    atomic_write(target, b"first")
    assert target.read_bytes() == b"first"

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "deep" / "y.png", b"second")
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["x.png"]


def test_partials_left_by_a_killed_run_are_removed(tmp_path: Path) -> None:
    touch(tmp_path / "a" / ".x.png.1234abcd.partial")
    touch(tmp_path / "a" / "x.png")
    assert remove_stale_partials(tmp_path) == 1
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.png"]


def test_the_report_holds_this_runs_failures_and_goes_when_there_are_none(tmp_path: Path) -> None:
    report = tmp_path / "failures.jsonl"
    write_report(report, [Failure("a.jpg", "INVALID_ARGUMENT", 'the image is "empty"')])
    assert (
        report.read_text() == '{"file": "a.jpg", "status": "INVALID_ARGUMENT", "message": "the image is \\"empty\\""}\n'
    )
    write_report(report, [])
    assert not report.exists()
