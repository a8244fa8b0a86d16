"""Which extra installs a missing third-party module, so that a command says what to install."""

from __future__ import annotations

from matteserve.errors import MatteserveError

# Top-level import name -> the extra in pyproject.toml that installs it (a test keeps the two in step).
EXTRA_OF_MODULE = {
    "typer": "gateway",
    "rich": "gateway",
    "numpy": "gateway",
    "PIL": "gateway",
    "simplejpeg": "gateway",
    "tritonclient": "gateway",
    "prometheus_client": "gateway",
    "grpc_reflection": "gateway",
    "pytriton": "server",
    "onnx": "server",
    "onnxruntime": "server",
    "fpng": "server",
    "cv2": "server",
    "openvino": "server",
    "nncf": "server",
    "matplotlib": "loadtest",
    "skimage": "loadtest",
}


class MissingExtra(MatteserveError):
    """A command needs a package that only one of matteserve's extras installs."""


def missing_extra(e: ModuleNotFoundError) -> MissingExtra | None:
    """What to tell the user about ``e``; None when no extra installs the missing module."""
    module = (e.name or "").partition(".")[0]
    extra = EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    return MissingExtra(
        f"this needs matteserve's {extra} extra ({module} is not installed): pip install 'matteserve[{extra}]'"
    )
