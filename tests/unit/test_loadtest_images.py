"""Load-test inputs: generated photos and folders."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from matteserve.errors import MatteserveError
from matteserve.loadtest import images


def test_generated_inputs_are_distinct_jpeg_photos_at_the_asked_size() -> None:
    made = images.generated(256, 4)
    assert [m.name for m in made] == ["astronaut-256", "chelsea-256", "coffee-256", "rocket-256"]
    assert len({m.data for m in made}) == 4
    for m in made:
        with Image.open(io.BytesIO(m.data)) as img:
            assert (img.format, img.size, img.mode) == ("JPEG", (256, 256), "RGB")


def test_a_folder_gives_every_file_in_name_order_images_or_not(tmp_path: Path) -> None:
    (tmp_path / "b.jpg").write_bytes(images.photo_jpeg("coffee", 64))
    (tmp_path / "a.txt").write_bytes(b"not an image")
    (tmp_path / ".hidden").write_bytes(b"skipped")
    (tmp_path / "sub").mkdir()
    found = images.from_folder(tmp_path)
    assert [f.name for f in found] == ["a.txt", "b.jpg"]
    assert found[0].data == b"not an image"


def test_an_empty_or_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MatteserveError, match="no files"):
        images.from_folder(tmp_path)
    with pytest.raises(MatteserveError, match="not a folder"):
        images.from_folder(tmp_path / "missing")
