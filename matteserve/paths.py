"""Where matteserve keeps what it downloads and builds."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$MATTESERVE_CACHE``, else ``$XDG_CACHE_HOME/matteserve``, else ``~/.cache/matteserve``."""
    if env := os.environ.get("MATTESERVE_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "matteserve"


def default_repository(model: str, target: str) -> Path:
    return cache_dir() / "repositories" / f"{model}-{target}"
