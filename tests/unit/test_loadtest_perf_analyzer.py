"""perf_analyzer's --input-data document and its CSV report."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from matteserve.loadtest import perf_analyzer


def test_input_data_decodes_back_to_the_exact_image_and_option_bytes(make_photo: Callable[..., bytes]) -> None:
    images = [make_photo(640, 480), make_photo(300, 200, "coffee"), b"", b"\x00\xff" * 7]
    options = b'{"format": "webp"}'
    doc = json.loads(json.dumps(perf_analyzer.input_data(images, options)))
    assert len(doc["data"]) == len(images)
    for step, image in zip(doc["data"], images, strict=True):
        assert step["IMAGE"]["shape"] == [1]
        assert perf_analyzer.decode_bytes_element(step["IMAGE"]["b64"]) == [image]
        assert perf_analyzer.decode_bytes_element(step["OPTIONS"]["b64"]) == [options]


def test_the_length_prefix_is_four_bytes_little_endian() -> None:
    raw = base64.b64decode(perf_analyzer.bytes_element(b"x" * 300))
    assert raw[:4] == struct.pack("<I", 300) == b"\x2c\x01\x00\x00"
    assert raw[4:] == b"x" * 300


def test_a_truncated_bytes_tensor_is_rejected() -> None:
    raw = struct.pack("<I", 10) + b"short"
    with pytest.raises(ValueError, match="truncated"):
        perf_analyzer.decode_bytes_element(base64.b64encode(raw).decode())


def test_parse_csv_reads_throughput_and_latency_in_ms(tmp_path: Path) -> None:
    path = tmp_path / "pa.csv"
    path.write_text(
        "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
        "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\n"
        "2,1.66339,13,64469,2,477,1106511,3061,2,1170353,1198931,1277458,1279332\n"
    )
    result = perf_analyzer.parse_csv(path, ["perf_analyzer"])
    assert result.concurrency == 2
    assert result.throughput_rps == pytest.approx(1.66339)
    assert result.p50_ms == pytest.approx(1170.353)
    assert result.p99_ms == pytest.approx(1279.332)


def test_check_says_how_to_install_when_the_binary_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATTESERVE_CACHE", str(tmp_path))
    with pytest.raises(perf_analyzer.PerfAnalyzerMissing, match="make perf-analyzer"):
        perf_analyzer.check()
