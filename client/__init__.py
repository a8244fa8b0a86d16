"""How other services call matteserve: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

    from matteserve.client import Client
    with Client("127.0.0.1:50051", api_key=key) as client:
        cutout = client.remove(open("photo.jpg", "rb").read(), format="png").data

Errors are typed (matteserve.client.errors), all rooted at matteserve.errors.MatteserveError.
The names load on first use, so ``matteserve --help`` works before the gRPC stubs are generated.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matteserve.client.aio import AsyncClient
    from matteserve.client.common import TLS, RemoveResult, RetryPolicy, StreamItem
    from matteserve.client.sync import Client

_HOMES = {
    "AsyncClient": "aio",
    "Client": "sync",
    "TLS": "common",
    "RemoveResult": "common",
    "RetryPolicy": "common",
    "StreamItem": "common",
}
__all__ = ["TLS", "AsyncClient", "Client", "RemoveResult", "RetryPolicy", "StreamItem"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'matteserve.client' has no attribute {name!r}")
    return getattr(importlib.import_module(f"matteserve.client.{_HOMES[name]}"), name)
