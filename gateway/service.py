"""The BackgroundRemoval servicer: protobuf in -> one Triton call -> protobuf out.

Every image, unary or streamed, goes through :meth:`BackgroundRemovalService.remove_one`, which is
where limits, metrics and the request log live. The API key, the request id and turning errors into
status codes happen around it, in gateway/interceptors.py and gateway/status.py.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from google.protobuf.message import Message

from matteserve import api
from matteserve.api import FORMAT_FROM_PROTO as FORMATS
from matteserve.api.v1 import matteserve_pb2 as pb
from matteserve.api.v1 import matteserve_pb2_grpc as pb_grpc
from matteserve.errors import InvalidOptions, ResultTooLarge, quote
from matteserve.gateway.admission import Admission, AdmissionSettings, Ticket
from matteserve.gateway.backends import TritonPool
from matteserve.gateway.config import GatewayConfig
from matteserve.gateway.interceptors import Metadata, request_id_var
from matteserve.gateway.metrics import GatewayMetrics
from matteserve.gateway.status import code_of, described, message_of
from matteserve.options import OutputFormat, RequestOptions, parse_colour
from matteserve.pipeline.decode import check_header

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["BackgroundRemoval"].full_name
_MODEL_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
# Header checks run here, off the event loop: each is bounded (matteserve.pipeline.header), and two
# threads are enough that a burst of large headers never waits behind the GIL for long.
HEADER_THREADS = 2


def to_options(message: pb.Options) -> RequestOptions:
    if message.format not in FORMATS:
        raise InvalidOptions(f"unknown output format {message.format}; see OutputFormat in the proto")
    if message.model and not _MODEL_NAME.fullmatch(message.model):
        raise InvalidOptions(f"model must be a model name such as 'u2netp', got {quote(message.model)}")
    kwargs: dict[str, Any] = {"format": FORMATS[message.format]}
    if message.background:
        kwargs["background"] = parse_colour(message.background)
    if message.quality:
        kwargs["quality"] = message.quality
    kwargs["refine"] = message.refine
    return RequestOptions(**kwargs)


def format_label(message: pb.Options) -> str:
    return FORMATS[message.format].value if message.format in FORMATS else "unknown"


def response_limit(cfg: GatewayConfig, metadata: Metadata | None) -> int:
    """The largest response this caller takes: ours, or the receive limit it sent, if lower."""
    given = next((str(v) for k, v in metadata or () if k == api.MAX_RESPONSE_BYTES_KEY), "")
    return min(cfg.max_message_bytes, int(given)) if given.isascii() and given.isdigit() else cfg.max_message_bytes


def check_fits(message: Message, limit: int) -> None:
    """Refuse a response before it is sent when the caller could not receive it."""
    size = message.ByteSize()
    if size > limit:
        raise ResultTooLarge(
            f"the result is {size / 2**20:.1f} MiB, above the {limit / 2**20:.1f} MiB a response may carry; "
            "send a smaller image, or ask for OUTPUT_FORMAT_WEBP (far smaller) or OUTPUT_FORMAT_MASK (alpha only)"
        )


class BackgroundRemovalService(pb_grpc.BackgroundRemovalServicer):
    def __init__(self, cfg: GatewayConfig, pool: TritonPool, metrics: GatewayMetrics) -> None:
        self.cfg = cfg
        self.pool = pool
        self.metrics = metrics
        self.header_pool = ThreadPoolExecutor(HEADER_THREADS, thread_name_prefix="header")
        self.admission = Admission(
            AdmissionSettings(
                cfg.queue_budget_s, cfg.big_image_pixels, cfg.big_in_flight, cfg.max_in_flight, cfg.min_in_flight
            ),
            metrics,
        )

    @property
    def in_flight(self) -> int:
        return self.admission.in_flight

    async def Remove(self, request: pb.RemoveRequest, context: grpc.aio.ServicerContext) -> pb.RemoveResponse:
        limit = response_limit(self.cfg, context.invocation_metadata())
        return await self.remove_one("Remove", request, request_id_var.get(), _deadline(context, self.cfg), limit)

    async def RemoveStream(
        self, requests: AsyncIterator[pb.RemoveStreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RemoveStreamResponse]:
        rid = request_id_var.get()
        limit = response_limit(self.cfg, context.invocation_metadata())
        results: asyncio.Queue[pb.RemoveStreamResponse | None] = asyncio.Queue()
        # An item holds a place in the window from the moment it is read until its result has been
        # handed to gRPC, so a caller that stops reading results stops the gateway reading items.
        window = asyncio.Semaphore(self.cfg.stream_window)
        tasks: set[asyncio.Task[None]] = set()

        async def one(item: pb.RemoveStreamRequest, item_rid: str) -> None:
            try:
                deadline = _deadline(context, self.cfg)
                result = await self.remove_one("RemoveStream", item.request, item_rid, deadline, limit)
                response = pb.RemoveStreamResponse(id=item.id, result=result)
                check_fits(response, limit)
            except Exception as e:
                error = pb.Error(code=code_of(e).name, message=message_of(e))
                response = pb.RemoveStreamResponse(id=item.id, error=error)
            await results.put(response)

        async def read() -> None:
            try:
                number = 0
                async for item in requests:
                    await window.acquire()
                    number += 1
                    task = asyncio.create_task(one(item, f"{rid}.{number}"))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                await asyncio.gather(*tasks)
            finally:
                await results.put(None)

        reader = asyncio.create_task(read())
        try:
            while (response := await results.get()) is not None:
                yield response
                window.release()
            await reader  # re-raises a failure to read the stream
        finally:
            for task in (reader, *tasks):
                task.cancel()

    async def remove_one(
        self, method: str, request: pb.RemoveRequest, rid: str, deadline: float, limit: int
    ) -> pb.RemoveResponse:
        """One image through the limits and Triton; raises MatteserveError subclasses for the caller.

        ``limit`` is the largest response the caller can receive: a larger result is refused here,
        once, rather than sent for gRPC to fail (and a client to retry).
        """
        start = time.perf_counter()
        fmt = format_label(request.options)
        outcome: BaseException | None = None
        ticket: Ticket | None = None
        waited = False
        log: dict[str, Any] = {"request_id": rid, "method": method, "format": fmt, "bytes_in": len(request.image)}
        try:
            options = to_options(request.options)
            self.metrics.request_bytes.observe(len(request.image))
            header = await asyncio.get_running_loop().run_in_executor(
                self.header_pool, check_header, request.image, self.cfg.limits
            )
            pixels = header.width * header.height
            self.metrics.input_megapixels.observe(pixels / 1e6)
            if options.format is OutputFormat.RAW:  # its size is known before any work
                check_fits(pb.RemoveResponse(data=bytes(pixels)), limit)
            ticket = self.admission.admit(pixels, deadline, self.pool.any_ready)  # or RESOURCE_EXHAUSTED at once
            self.metrics.in_flight.inc()
            result = await self.pool.infer(
                request.image, options.to_json(), request.options.model or None, deadline, rid, ticket.priority
            )
            waited = result.waited
            log |= {"endpoint": result.endpoint, "model": result.model, "bytes_out": len(result.data)}
            self.metrics.response_bytes.observe(len(result.data))
            timings = {
                "preprocess": result.meta.preprocess_ms,
                "postprocess": result.meta.postprocess_ms,
                "triton": result.seconds * 1000,
                "gateway": (time.perf_counter() - start) * 1000,
            }
            response = pb.RemoveResponse(
                data=result.data,
                content_type=result.meta.content_type,
                width=result.meta.width,
                height=result.meta.height,
                timings_ms=timings,
                model=result.model,
                request_id=rid,
            )
            check_fits(response, limit)
            return response
        except BaseException as e:
            outcome = e
            raise
        finally:
            if ticket is not None:
                # Only a call that ran without waiting for a restarted Triton measures the drain rate.
                self.admission.release(ticket, completed=outcome is None and not waited)
                self.metrics.in_flight.dec()
            self._record(method, fmt, outcome, time.perf_counter() - start, log)

    def _record(
        self, method: str, fmt: str, outcome: BaseException | None, seconds: float, log: dict[str, Any]
    ) -> None:
        """Metrics and the request log; a failure here must never fail the request."""
        try:
            code = "OK" if outcome is None else code_of(outcome).name
            self.metrics.requests.labels(method, code, fmt).inc()
            self.metrics.request_duration.labels(method, fmt).observe(seconds)
            log |= {"code": code, "duration_ms": round(seconds * 1000, 2)}
            if outcome is not None and code == "INTERNAL":
                logger.error("%s %s failed", method, log["request_id"], exc_info=outcome, extra=log)
            elif code == "RESOURCE_EXHAUSTED":
                # Under overload refusals come by the hundred per second: counted above, summarised
                # by gateway/admission.py, never one INFO line each.
                logger.debug("%s %s %s: %s", method, fmt, code, outcome, extra=log)
            else:
                detail = "" if outcome is None else f": {described(outcome)}"
                logger.info("%s %s %s in %.1f ms%s", method, fmt, code, seconds * 1000, detail, extra=log)
        except Exception:
            logger.exception("recording metrics for request %s failed", log.get("request_id"))


def _deadline(context: grpc.aio.ServicerContext, cfg: GatewayConfig) -> float:
    """The caller's deadline as a monotonic time (Triton gets what is left as client_timeout)."""
    remaining = context.time_remaining()
    if remaining is None:
        remaining = cfg.triton_timeout_s
    return time.monotonic() + min(remaining, cfg.triton_timeout_s)
