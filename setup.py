"""What pyproject.toml cannot say to setuptools: generate the gRPC stubs, and build outside ``build/``.

The stubs of ``matteserve.api.v1`` are generated from the proto by grpcio-tools (a build requirement) on
every build, so a plain ``pip install .`` gives a client that imports; an editable install writes them
beside the proto's package, a wheel build into the wheel. ``build/`` is the ``matteserve.build`` package,
so setuptools' own build directory (``build/lib``, a full copy of the package) goes elsewhere.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PROTO_ROOT = Path("matteserve/api/proto")
PROTO = "matteserve/v1/matteserve.proto"  # the path is part of the API: reflection serves it by this name
STUBS = "matteserve/api/v1"
# protoc names the stub modules after the proto's path (matteserve.v1); they live in matteserve.api.v1.
IMPORT_FROM, IMPORT_TO = "from matteserve.v1 import", "from matteserve.api.v1 import"
BUILD_BASE = ".setuptools-build"


def generate_stubs(out: Path) -> None:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"--python_out={tmp}", f"--pyi_out={tmp}"]
        if protoc.main([*args, f"--grpc_python_out={tmp}", PROTO]) != 0:
            raise SystemExit(f"protoc failed on {PROTO_ROOT / PROTO}")
        out.mkdir(parents=True, exist_ok=True)
        for src in sorted((Path(tmp) / Path(PROTO).parent).iterdir()):
            (out / src.name).write_text(src.read_text().replace(IMPORT_FROM, IMPORT_TO))


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        super().run()
        # After the copy, so stubs left in the source folder by an editable install never win.
        generate_stubs(Path(STUBS) if self.editable_mode else Path(self.build_lib, STUBS))


setup(cmdclass={"build_py": BuildPyWithStubs}, options={"build": {"build_base": BUILD_BASE}})
