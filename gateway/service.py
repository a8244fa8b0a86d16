"""The BackgroundRemoval servicer: protobuf in -> one Triton call -> protobuf out.

Every image, unary or streamed, goes through :meth:`BackgroundRemovalService.remove_one`, which is
where limits, metrics and the request log live; errors become status codes in gateway/status.py.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from matteserve.errors import InvalidOptions
from matteserve.gateway.admission import Admission, AdmissionSettings, Ticket
from matteserve.gateway.auth import KeyRing
from matteserve.gateway.backends import TritonPool
from matteserve.gateway.config import GatewayConfig
from matteserve.gateway.metrics import GatewayMetrics
from matteserve.gateway.status import code_of, message_of
from matteserve.gateway.v1 import matteserve_pb2 as pb
from matteserve.gateway.v1 import matteserve_pb2_grpc as pb_grpc
from matteserve.options import OutputFormat, RequestOptions, parse_colour
from matteserve.pipeline.decode import open_image

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["BackgroundRemoval"].full_name
REQUEST_ID_KEY = "x-request-id"
_CALLER_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

FORMATS = {
    pb.OUTPUT_FORMAT_UNSPECIFIED: OutputFormat.PNG,
    pb.OUTPUT_FORMAT_PNG: OutputFormat.PNG,
    pb.OUTPUT_FORMAT_MASK: OutputFormat.MASK,
    pb.OUTPUT_FORMAT_WEBP: OutputFormat.WEBP,
    pb.OUTPUT_FORMAT_JPEG: OutputFormat.JPEG,
    pb.OUTPUT_FORMAT_RAW: OutputFormat.RAW,
}

Metadata = Sequence[tuple[str, str | bytes]]


def to_options(message: pb.Options) -> RequestOptions:
    if message.format not in FORMATS:
        raise InvalidOptions(f"unknown output format {message.format}; see OutputFormat in the proto")
    kwargs: dict[str, Any] = {"format": FORMATS[message.format]}
    if message.background:
        kwargs["background"] = parse_colour(message.background)
    if message.quality:
        kwargs["quality"] = message.quality
    kwargs["refine"] = message.refine
    return RequestOptions(**kwargs)


def format_label(message: pb.Options) -> str:
    return FORMATS[message.format].value if message.format in FORMATS else "unknown"


def request_id(metadata: Metadata | None) -> str:
    """The caller's x-request-id if it is a sane token, else a fresh one."""
    given = next((str(v) for k, v in metadata or () if k == REQUEST_ID_KEY), "")
    return given if _CALLER_ID.fullmatch(given) else uuid.uuid4().hex[:16]


class BackgroundRemovalService(pb_grpc.BackgroundRemovalServicer):
    def __init__(self, cfg: GatewayConfig, pool: TritonPool, metrics: GatewayMetrics, keys: KeyRing) -> None:
        self.cfg = cfg
        self.pool = pool
        self.metrics = metrics
        self.keys = keys
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
        metadata = context.invocation_metadata()
        rid = request_id(metadata)
        context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
        try:
            return await self.remove_one("Remove", request, rid, _deadline(context, self.cfg), metadata)
        except Exception as e:
            await context.abort(code_of(e), message_of(e), trailing_metadata=((REQUEST_ID_KEY, rid),))
            raise AssertionError("unreachable: abort raises") from e

    async def RemoveStream(
        self, requests: AsyncIterator[pb.RemoveStreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RemoveStreamResponse]:
        metadata = context.invocation_metadata()
        rid = request_id(metadata)
        context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
        try:
            self.keys.check(metadata or ())
        except Exception as e:
            await context.abort(code_of(e), message_of(e), trailing_metadata=((REQUEST_ID_KEY, rid),))
        results: asyncio.Queue[pb.RemoveStreamResponse | None] = asyncio.Queue()
        window = asyncio.Semaphore(self.cfg.stream_window)
        tasks: set[asyncio.Task[None]] = set()

        async def one(item: pb.RemoveStreamRequest, item_rid: str) -> None:
            try:
                result = await self.remove_one("RemoveStream", item.request, item_rid, _deadline(context, self.cfg))
                await results.put(pb.RemoveStreamResponse(id=item.id, result=result))
            except Exception as e:
                error = pb.Error(code=code_of(e).name, message=message_of(e))
                await results.put(pb.RemoveStreamResponse(id=item.id, error=error))
            finally:
                window.release()

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
            await reader  # re-raises a failure to read the stream
        finally:
            for task in (reader, *tasks):
                task.cancel()

    async def remove_one(
        self, method: str, request: pb.RemoveRequest, rid: str, deadline: float, metadata: Metadata | None = None
    ) -> pb.RemoveResponse:
        """One image through the limits and Triton; raises MatteserveError subclasses for the caller."""
        start = time.perf_counter()
        fmt = format_label(request.options)
        outcome: BaseException | None = None
        ticket: Ticket | None = None
        waited = False
        log: dict[str, Any] = {"request_id": rid, "method": method, "format": fmt, "bytes_in": len(request.image)}
        try:
            if metadata is not None:
                self.keys.check(metadata)
            options = to_options(request.options)
            self.metrics.request_bytes.observe(len(request.image))
            with open_image(request.image, self.cfg.limits) as header:
                pixels = header.width * header.height
            self.metrics.input_megapixels.observe(pixels / 1e6)
            ticket = self.admission.admit(pixels, deadline, self.pool.any_ready)  # or RESOURCE_EXHAUSTED at once
            self.metrics.in_flight.inc()
            result = await self.pool.infer(
                request.image, options.to_json(), request.options.model or None, deadline, rid, ticket.priority
            )
            waited = result.waited
            log |= {"endpoint": result.endpoint, "model": result.model, "bytes_out": len(result.data)}
            self.metrics.response_bytes.observe(len(result.data))
            meta = result.meta
            timings = {
                "preprocess": float(meta.get("preprocess_ms", 0.0)),
                "postprocess": float(meta.get("postprocess_ms", 0.0)),
                "triton": result.seconds * 1000,
                "gateway": (time.perf_counter() - start) * 1000,
            }
            return pb.RemoveResponse(
                data=result.data,
                content_type=str(meta["content_type"]),
                width=int(meta["width"]),
                height=int(meta["height"]),
                timings_ms=timings,
                model=result.model,
                request_id=rid,
            )
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
                detail = "" if outcome is None else f": {outcome}"
                logger.info("%s %s %s in %.1f ms%s", method, fmt, code, seconds * 1000, detail, extra=log)
        except Exception:
            logger.exception("recording metrics for request %s failed", log.get("request_id"))


def _deadline(context: grpc.aio.ServicerContext, cfg: GatewayConfig) -> float:
    """The caller's deadline as a monotonic time (Triton gets what is left as client_timeout)."""
    remaining = context.time_remaining()
    if remaining is None:
        remaining = cfg.triton_timeout_s
    return time.monotonic() + min(remaining, cfg.triton_timeout_s)
