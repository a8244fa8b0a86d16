"""The Triton endpoints behind a gateway: health-checked, least-loaded first, retried elsewhere.

A request goes to the ready endpoint with the fewest requests in flight (ties rotate). If that
endpoint is UNAVAILABLE the request goes to another ready endpoint within the caller's deadline, and
the endpoint is probed at once; nothing is dropped without an error going back to the caller. While
no endpoint is ready (a Triton restart), a request waits for one to come back, within its deadline
and ``backend_wait_s``. Triton gets the caller's remaining time as the request's queue timeout, so a
request that can no longer be answered in time is dropped from Triton's queues before any compute.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import tritonclient.grpc.aio as tritongrpc
from tritonclient.utils import InferenceServerException

from matteserve import contract
from matteserve.errors import BackendUnavailable, InvalidOptions, Timeout
from matteserve.gateway.metrics import GatewayMetrics
from matteserve.gateway.status import code_of, from_triton

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0
DEADLINE_MARGIN_S = 0.05
BACKEND_WAIT_MARGIN_S = 0.2
# Times one request goes back to the endpoints after waiting for one to be ready: an endpoint that
# probes ready but fails every call must not be called in a loop until the deadline.
MAX_ROUNDS = 3
# gRPC's default reconnect backoff grows to 120 s: a restarted Triton would sit unused for minutes.
CHANNEL_ARGS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]


DNS_PREFIX = "dns:///"


async def resolve_ips(host: str, port: int) -> list[str]:
    """IPv4 addresses of ``host`` (IPv6 where it has none), as a headless Service publishes its pods."""
    loop = asyncio.get_running_loop()
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
        except socket.gaierror:
            continue
        ips = sorted({str(info[4][0]) for info in infos})
        if ips:
            return [f"[{ip}]" if family == socket.AF_INET6 else ip for ip in ips]
    raise OSError(f"{host} resolves to no address")


@dataclass
class Endpoint:
    url: str
    client: tritongrpc.InferenceServerClient
    ready: bool = False
    model: str | None = None  # the matting model it serves, read from its preprocess config
    in_flight: int = 0


@dataclass(frozen=True)
class TritonResult:
    data: bytes
    meta: contract.Meta
    endpoint: str
    model: str
    seconds: float
    waited: bool = False  # it found no endpoint ready and waited for one


@dataclass
class TritonPool:
    urls: tuple[str, ...]
    metrics: GatewayMetrics
    health_interval_s: float = 1.0
    backend_wait_s: float = 15.0
    on_readiness: Callable[[bool], None] = lambda ready: None
    endpoints: list[Endpoint] = field(init=False)
    _turn: itertools.count[int] = field(init=False, default_factory=itertools.count)
    _tasks: set[asyncio.Task[None]] = field(init=False, default_factory=set)
    _any_ready: bool | None = field(init=False, default=None)
    _readiness_changed: asyncio.Event = field(init=False, default_factory=asyncio.Event)

    resolve: Callable[[str, int], Awaitable[list[str]]] = field(default=lambda host, port: resolve_ips(host, port))
    _retired: list[Endpoint] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.endpoints = [self._endpoint(url) for url in self.urls if not url.startswith(DNS_PREFIX)]

    def _endpoint(self, url: str) -> Endpoint:
        self.metrics.endpoint_up.labels(url).set(0)
        return Endpoint(url, tritongrpc.InferenceServerClient(url, channel_args=CHANNEL_ARGS))

    async def start(self) -> None:
        await self.refresh_dns()
        await self.probe_all()
        self._spawn(self._health_loop())

    async def refresh_dns(self) -> None:
        """Expand each ``dns:///host:port`` into one endpoint per address it resolves to now.

        A Kubernetes headless Service resolves to every ready Triton pod, so the pool follows the
        autoscaler: new pods join, gone pods leave (closed once their last request is done). A
        failed lookup keeps the endpoints already known.
        """
        wanted: set[str] = set()
        dynamic = [u for u in self.urls if u.startswith(DNS_PREFIX)]
        for url in dynamic:
            host, _, port = url.removeprefix(DNS_PREFIX).rpartition(":")
            try:
                wanted |= {f"{ip}:{port}" for ip in await self.resolve(host, int(port))}
            except OSError as e:
                logger.warning("cannot resolve %s: %s; keeping the endpoints known so far", url, e)
                return
        if not dynamic:
            return
        static = {u for u in self.urls if not u.startswith(DNS_PREFIX)}
        known = {ep.url for ep in self.endpoints}
        for url in sorted(wanted - known):
            logger.info("Triton endpoint %s joined", url, extra={"endpoint": url})
            self.endpoints.append(self._endpoint(url))
        for ep in [ep for ep in self.endpoints if ep.url not in wanted | static]:
            logger.info("Triton endpoint %s left", ep.url, extra={"endpoint": ep.url})
            self.endpoints.remove(ep)
            self.metrics.endpoint_up.remove(ep.url)
            self._retired.append(ep)
        for ep in [ep for ep in self._retired if ep.in_flight == 0]:
            self._retired.remove(ep)
            await ep.client.close()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        endpoints = [*self.endpoints, *self._retired]
        await asyncio.gather(*(ep.client.close() for ep in endpoints), return_exceptions=True)

    @property
    def any_ready(self) -> bool:
        return any(ep.ready for ep in self.endpoints)

    @property
    def models(self) -> set[str]:
        return {ep.model for ep in self.endpoints if ep.model is not None}

    async def infer(
        self, image: bytes, options: bytes, model: str | None, deadline: float, request_id: str, priority: int = 0
    ) -> TritonResult:
        """Run the ensemble on the best ready endpoint; on UNAVAILABLE try the others, and while none
        is ready wait for one, all before ``deadline``."""
        tried: list[Endpoint] = []
        failure: BackendUnavailable | None = None
        failed: Endpoint | None = None
        # Waiting ends a little before the caller's deadline, so the caller hears UNAVAILABLE, not a timeout.
        wait_until = min(deadline - BACKEND_WAIT_MARGIN_S, time.monotonic() + self.backend_wait_s)
        rounds = 0
        while True:
            ep = self._pick(model, tried)
            if ep is None and rounds < MAX_ROUNDS and await self._wait_for_ready(model, wait_until, request_id):
                rounds += 1
                tried.clear()  # an endpoint came back: a restarted one is worth another try
                ep = self._pick(model, tried)
            if ep is None:
                raise failure or self._nothing_ready(model)
            if failed is not None:
                self.metrics.retries.labels(failed.url).inc()
            tried.append(ep)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Timeout("the deadline passed before Triton could be called")
            # Triton's deadline falls a little before the caller's, so the caller hears why.
            timeout = remaining - min(DEADLINE_MARGIN_S, remaining / 10)
            try:
                result = await self._call(ep, image, options, timeout, request_id, priority)
                return dataclasses.replace(result, waited=True) if rounds else result
            except BackendUnavailable as e:
                logger.warning("%s; trying another endpoint", e, extra={"request_id": request_id})
                failure, failed = e, ep
                self._suspect(ep)

    async def _wait_for_ready(self, model: str | None, until: float, request_id: str) -> bool:
        """Wait until an endpoint that could serve ``model`` turns ready; False if none did by ``until``
        or none ever could (an unknown model is not worth waiting for)."""
        if isinstance(self._nothing_ready(model), InvalidOptions):
            return False
        counted = False
        while (left := until - time.monotonic()) > 0:
            if any(ep.ready and (model is None or ep.model == model) for ep in self.endpoints):
                return True
            if not counted:
                self.metrics.backend_waits.inc()
                logger.debug("no Triton endpoint ready; waiting up to %.1f s", left, extra={"request_id": request_id})
                counted = True
            self._readiness_changed.clear()
            try:
                await asyncio.wait_for(self._readiness_changed.wait(), left)
            except TimeoutError:
                break
        return False

    def _pick(self, model: str | None, tried: list[Endpoint]) -> Endpoint | None:
        candidates = [
            ep for ep in self.endpoints if ep.ready and ep not in tried and (model is None or ep.model == model)
        ]
        if not candidates:
            return None
        turn = next(self._turn)
        least = min(ep.in_flight for ep in candidates)
        best = [ep for ep in candidates if ep.in_flight == least]
        return best[turn % len(best)]

    def _nothing_ready(self, model: str | None) -> Exception:
        known = self.models
        if model is not None and known and model not in known and all(ep.model for ep in self.endpoints):
            return InvalidOptions(f"unknown model {model!r}; this gateway serves: {', '.join(sorted(known))}")
        which = f" for model {model!r}" if model else ""
        return BackendUnavailable(f"no Triton endpoint{which} is ready ({len(self.endpoints)} configured)")

    async def _call(
        self, ep: Endpoint, image: bytes, options: bytes, timeout: float, request_id: str, priority: int
    ) -> TritonResult:
        inputs = contract.ensemble_inputs(image, options)
        ep.in_flight += 1
        start = time.perf_counter()
        try:
            result = await ep.client.infer(
                contract.ENSEMBLE,
                inputs,
                request_id=request_id,
                priority=priority,
                timeout=int(timeout * 1e6),  # Triton's queue timeout, in microseconds
                client_timeout=timeout,
            )
        except InferenceServerException as e:
            error = from_triton(e, ep.url)
            self.metrics.triton_errors.labels(ep.url, code_of(error).name).inc()
            raise error from e
        finally:
            ep.in_flight -= 1
            seconds = time.perf_counter() - start
        self.metrics.triton_duration.labels(ep.url).observe(seconds)
        return TritonResult(*contract.ensemble_result(result), ep.url, ep.model or "", seconds)

    def _suspect(self, ep: Endpoint) -> None:
        """Take the endpoint out of rotation now and probe it at once; a healthy one comes straight back."""
        self._set_ready(ep, False)
        self._spawn(self._probe(ep))

    async def probe_all(self) -> None:
        await asyncio.gather(*(self._probe(ep) for ep in self.endpoints))

    async def _probe(self, ep: Endpoint) -> None:
        try:
            ready = await ep.client.is_server_ready(client_timeout=PROBE_TIMEOUT_S) and await ep.client.is_model_ready(
                contract.ENSEMBLE, client_timeout=PROBE_TIMEOUT_S
            )
            if ready and ep.model is None:
                ep.model = await self._served_model(ep)
        except (InferenceServerException, KeyError, ValueError) as e:
            logger.debug("probe of %s failed: %s", ep.url, e)
            ready = False
        self._set_ready(ep, ready)

    @staticmethod
    async def _served_model(ep: Endpoint) -> str:
        config = await ep.client.get_model_config(contract.PREPROCESS, as_json=True, client_timeout=PROBE_TIMEOUT_S)
        spec = json.loads(config["config"]["parameters"][contract.Parameter.SPEC]["string_value"])
        return str(spec["name"])

    def _set_ready(self, ep: Endpoint, ready: bool) -> None:
        if ep not in self.endpoints:
            return  # left the pool (DNS) while its probe was running
        if ep.ready != ready:
            logger.info("Triton %s is %s", ep.url, "ready" if ready else "NOT ready", extra={"endpoint": ep.url})
        ep.ready = ready
        if ready:
            self._readiness_changed.set()
        self.metrics.endpoint_up.labels(ep.url).set(1 if ready else 0)
        any_ready = any(e.ready for e in self.endpoints)
        if any_ready != self._any_ready:
            self._any_ready = any_ready
            self.on_readiness(any_ready)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval_s)
            await self.refresh_dns()
            await self.probe_all()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
