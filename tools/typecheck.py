"""Type-check the ``matteserve`` namespace as it is installed.

Its subpackages live in top-level folders (``build/`` is ``matteserve.build``; see
docs/architecture.md). mypy maps modules to files by folder structure, so this lays out a tree of
symlinks shaped like the installed package, from the same mapping pyproject.toml gives setuptools,
and checks that.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / ".mypy_tree"


def main() -> int:
    mapping: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    shutil.rmtree(TREE, ignore_errors=True)
    for package, folder in sorted(mapping.items()):
        link = TREE.joinpath(*package.split("."))
        link.parent.mkdir(parents=True, exist_ok=True)
        if package == "matteserve":
            link.mkdir()
            for entry in (ROOT / folder).iterdir():
                if entry.name != "__pycache__":
                    (link / entry.name).symlink_to(entry)
        else:
            link.symlink_to(ROOT / folder)
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), str(TREE / "matteserve")]
    return subprocess.call(cmd, cwd=TREE)


if __name__ == "__main__":
    raise SystemExit(main())
