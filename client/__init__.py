"""How other services call matteserve: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

    from matteserve.client import Client
    with Client("127.0.0.1:50051", api_key=key) as client:
        cutout = client.remove(open("photo.jpg", "rb").read(), format="png").data

Errors are typed (matteserve.client.errors), all rooted at matteserve.errors.MatteserveError.
``pip install matteserve`` (no extra) is all this package needs.
"""

from matteserve.client.aio import AsyncClient
from matteserve.client.common import TLS, RemoveResult, RetryPolicy, StreamItem
from matteserve.client.sync import Client

__all__ = ["TLS", "AsyncClient", "Client", "RemoveResult", "RetryPolicy", "StreamItem"]
