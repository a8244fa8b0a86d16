"""Hostile inputs: PNGs whose headers or chunks would cost a careless decoder far more than their
bytes. The decode, Triton and gateway tests assert they are refused cheaply, and ``matteserve bench
hostile`` prints what refusing them costs.
"""

from __future__ import annotations

import asyncio
import io
import struct
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from matteserve.errors import MatteserveError

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(side: int) -> bytes:
    """A real 1-bit PNG of side x side zeros: 20000 px is 48 KB of file for 400 MP of pixels, and
    60000 px the 437 KB file that once froze the gateway for 8-10 s."""
    packer = zlib.compressobj(9)
    rows = bytes(1 + side // 8) * 1000
    idat = b"".join(packer.compress(rows) for _ in range(side // 1000)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares an RGB ``width`` x ``height`` without carrying its pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b"")
    )


def png_with(before_idat: bytes = b"", after_idat: bytes = b"", size: tuple[int, int] = (64, 48)) -> bytes:
    """A valid PNG of ``size`` with extra chunks spliced in before its image data and after it."""
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buf, "PNG")
    data = buf.getvalue()
    idat = data.index(b"IDAT") - 4
    iend = data.rindex(b"IEND") - 4
    return data[:idat] + before_idat + data[idat:iend] + after_idat + data[iend:]


def peak_rss_mib(pid: int) -> float:
    """A process's resident-memory high-water mark (VmHWM): what a hostile input made it hold."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


@dataclass(frozen=True)
class Refusals:
    health_s: list[float]  # each health check's latency while the payloads were being refused
    health_answers: set[str]  # what those checks answered (SERVING)
    refusal_s: list[float]  # each payload's call, in the payloads' order
    errors: list[MatteserveError | None]  # what each call raised (None: it was answered)


async def refusals_beside_health(target: str, payloads: Sequence[bytes]) -> Refusals:
    """Send every payload at once on one connection while a prober on its own connection, as a load
    balancer's, checks the gateway's health every 10 ms: a payload that stalls the gateway's event
    loop shows up as a slow health check."""
    from matteserve.client import AsyncClient, RetryPolicy

    health: list[float] = []
    answers: set[str] = set()
    done = asyncio.Event()

    async def probe() -> None:
        async with AsyncClient(target, timeout=10) as prober:
            await prober.health()
            while not done.is_set():
                start = time.perf_counter()
                answers.add(await prober.health())
                health.append(time.perf_counter() - start)
                await asyncio.sleep(0.01)

    async with AsyncClient(target, retry=RetryPolicy(attempts=1), timeout=120) as client:
        await client.health()

        async def send(data: bytes) -> tuple[float, MatteserveError | None]:
            start = time.perf_counter()
            try:
                await client.remove(data)
            except MatteserveError as e:
                return time.perf_counter() - start, e
            return time.perf_counter() - start, None

        probing = asyncio.create_task(probe())
        await asyncio.sleep(0.05)
        sent = await asyncio.gather(*(send(d) for d in payloads))
        done.set()
        await probing
    return Refusals(health, answers, [s for s, _ in sent], [e for _, e in sent])
