"""What a load test drives: Triton's ensemble directly, or the matteserve gateway.

Each target turns one image into one request and reports the outcome as a gRPC status name, so both
kinds are counted by the same codes (OK, INVALID_ARGUMENT, UNAVAILABLE, DEADLINE_EXCEEDED, ...).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from collections.abc import Sequence

from matteserve import contract
from matteserve.errors import MatteserveError
from matteserve.options import OutputFormat

logger = logging.getLogger(__name__)


def split_address(address: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise MatteserveError(f"address must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def check_loopback(address: str, allow_remote: bool) -> None:
    """Refuse to load anything but this machine unless the caller said so: a load test aimed at the
    wrong host is an outage."""
    if allow_remote:
        return
    host, port = split_address(address)
    try:
        resolved = {str(info[4][0]) for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)}
    except OSError as e:
        raise MatteserveError(f"cannot resolve {host!r}: {e}") from e
    remote = sorted(a for a in resolved if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if remote:
        raise MatteserveError(
            f"{address} resolves to {', '.join(remote)}, which is not this machine; "
            "pass --allow-remote to load-test another host on purpose"
        )


def status_name(status: str | None) -> str:
    """tritonclient's 'StatusCode.INVALID_ARGUMENT' -> 'INVALID_ARGUMENT'."""
    return (status or "UNKNOWN").removeprefix("StatusCode.")


class TritonTarget:
    """The ``remove_background`` ensemble over Triton's gRPC API (tritonclient's asyncio client)."""

    def __init__(
        self, url: str, inputs: Sequence[bytes], output_format: OutputFormat = OutputFormat.PNG, timeout: float = 60.0
    ) -> None:
        import tritonclient.grpc.aio as grpcclient

        self.name = f"triton {url}"
        self.client = grpcclient.InferenceServerClient(url)
        self.timeout = timeout
        options = json.dumps({"format": output_format.value}).encode()
        # Requests are built once per distinct input: the generator's own CPU time must stay small
        # next to the server's on a shared machine.
        self._options = options
        self._requests = {id(image): contract.ensemble_inputs(image, options) for image in inputs}

    async def send(self, image: bytes) -> str:
        from tritonclient.utils import InferenceServerException

        try:
            request = self._requests.get(id(image)) or contract.ensemble_inputs(image, self._options)
            await self.client.infer(contract.ENSEMBLE, request, client_timeout=self.timeout)
        except InferenceServerException as e:
            return status_name(e.status())
        return "OK"

    async def close(self) -> None:
        await self.client.close()


class GatewayTarget:
    """The matteserve gateway, through the project's own asyncio client. The client's retries are
    off: a load test counts every answer the service gives, and a retried request would hide an
    error and stretch a latency."""

    def __init__(
        self,
        address: str,
        output_format: OutputFormat = OutputFormat.PNG,
        timeout: float = 60.0,
        api_key: str | None = None,
    ) -> None:
        from matteserve.client import AsyncClient, RetryPolicy

        self.name = f"gateway {address}"
        self.client = AsyncClient(target=address, api_key=api_key, timeout=timeout, retry=RetryPolicy(attempts=1))
        self.format = output_format

    async def send(self, image: bytes) -> str:
        from matteserve.client.errors import RemoteError

        try:
            await self.client.remove(image, format=self.format)
        except RemoteError as e:
            return str(e.code.name)
        return "OK"

    async def close(self) -> None:
        await self.client.close()
