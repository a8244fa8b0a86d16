"""Generate the gRPC stubs of matteserve.v1 into gateway/v1/ (run by `make install`; never committed).

Run it as a script (``python gateway/protogen.py``): it must not import matteserve, whose gateway
package needs the stubs it writes.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE / "proto"
PROTO = "matteserve/v1/matteserve.proto"
OUT = HERE / "v1"
# protoc names the module after the proto path (matteserve.v1); the stubs live in matteserve.gateway.v1.
IMPORT_FROM = "from matteserve.v1 import"
IMPORT_TO = "from matteserve.gateway.v1 import"


def generate() -> list[Path]:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            PROTO,
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {PROTO_ROOT / PROTO}")
        written = []
        for src in sorted((Path(tmp) / "matteserve" / "v1").iterdir()):
            target = OUT / src.name
            target.write_text(src.read_text().replace(IMPORT_FROM, IMPORT_TO))
            written.append(target)
    return written


if __name__ == "__main__":
    for path in generate():
        print(f"generated {path.relative_to(HERE.parent)}", file=sys.stderr)
