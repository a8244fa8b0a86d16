"""matteserve.api: the one OutputFormat <-> proto map, and the stubs' protobuf runtime requirement."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

from matteserve.api import FORMAT_FROM_PROTO, FORMAT_TO_PROTO
from matteserve.api.v1 import matteserve_pb2 as pb
from matteserve.options import OutputFormat

ROOT = Path(__file__).resolve().parents[2]


def test_every_proto_format_means_one_output_format_and_unspecified_means_png() -> None:
    assert set(FORMAT_FROM_PROTO) == set(pb.OutputFormat.values())
    assert FORMAT_FROM_PROTO[pb.OUTPUT_FORMAT_UNSPECIFIED] is OutputFormat.PNG
    assert {FORMAT_FROM_PROTO[FORMAT_TO_PROTO[f]] for f in OutputFormat} == set(OutputFormat)
    assert len(set(FORMAT_TO_PROTO.values())) == len(OutputFormat)


def test_the_protobuf_runtime_the_package_asks_for_can_load_the_stubs_its_build_generates() -> None:
    """Stubs refuse a protobuf runtime older than the protoc that wrote them (or a major newer):
    the exact grpcio-tools pin fixes that protoc, and the dependency must admit only runtimes it allows."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (tools,) = [Requirement(r) for r in pyproject["build-system"]["requires"] if r.startswith("grpcio-tools")]
    assert re.fullmatch(r"==[\d.]+", str(tools.specifier)), "pin grpcio-tools exactly: its protoc sets the floor"
    (runtime,) = [Requirement(r) for r in pyproject["project"]["dependencies"] if r.startswith("protobuf")]
    found = re.search(
        r"ValidateProtobufRuntimeVersion\(\s*\S+,\s*(\d+),\s*(\d+),\s*(\d+),", Path(pb.__file__).read_text()
    )
    assert found, "the stubs no longer name the protoc version that wrote them"
    major, minor, patch = found.groups()
    gencode = Version(f"{major}.{minor}.{patch}")
    assert gencode in runtime.specifier
    assert Version(f"{int(major) + 1}") not in runtime.specifier
    older = Version(f"{major}.{minor}.{int(patch) - 1}") if int(patch) else Version(f"{major}.{int(minor) - 1}.99")
    assert older not in runtime.specifier
