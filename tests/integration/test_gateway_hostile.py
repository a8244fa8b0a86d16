"""A hostile caller against a real gateway and Triton: bombs, unauthenticated floods, streams that are
never read, results too large to receive, garbage bytes and oversized strings."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from PIL import Image

from matteserve.api.v1 import matteserve_pb2 as pb
from matteserve.api.v1 import matteserve_pb2_grpc as pb_grpc
from matteserve.client import AsyncClient, Client, RetryPolicy
from matteserve.client.common import build_request
from matteserve.client.errors import InvalidRequest, MessageTooLarge, Unauthenticated
from matteserve.gateway import GatewayProcess
from matteserve.gateway.auth import hash_key
from matteserve.loadtest import hostile
from matteserve.loadtest.hostile import png_bomb
from matteserve.tritonserver import TritonServer

from ..conftest import gateway_metric, start_gateway  # type: ignore[import-not-found]

NO_RETRY = RetryPolicy(attempts=1)
KEY = "hostile-test-key-0123456789"
MiB = 1024 * 1024


def triton_calls(gw: GatewayProcess) -> float:
    return gateway_metric(gw, "matteserve_gateway_triton_duration_seconds_count")


def peak_rss_mib(gw: GatewayProcess) -> float:
    assert gw.process is not None
    return hostile.peak_rss_mib(gw.process.pid)


@pytest.fixture(scope="module")
def own_gateway(
    triton: TritonServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., GatewayProcess]]:
    """Start gateways with given settings; each is stopped at the end of the module."""
    started: list[GatewayProcess] = []

    def start(**settings: object) -> GatewayProcess:
        gw = start_gateway([triton.cfg.grpc_url], tmp_path_factory.mktemp("hostile"), **settings)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


def test_health_checks_stay_prompt_while_bombs_and_big_pngs_are_refused(
    own_gateway: Callable[..., GatewayProcess], photo_arrays: dict[str, object]
) -> None:
    gw = own_gateway(max_pixels=1_000_000)
    bomb = png_bomb(60000)
    buf = io.BytesIO()
    Image.fromarray(photo_arrays["astronaut"]).resize((3000, 3000)).convert("RGBA").save(buf, "PNG", compress_level=1)
    big = buf.getvalue()  # a valid 9 MP RGBA PNG: decoding it takes ~0.1 s of CPU

    found = asyncio.run(hostile.refusals_beside_health(gw.target, [bomb, big] * 4))
    assert found.health_answers == {"SERVING"}
    for error in found.errors:
        assert isinstance(error, InvalidRequest)
        assert "above the 1.0 MP limit" in str(error)
    health, refusals = found.health_s, found.refusal_s
    # Before, one bomb held the event loop for 8-10 s: every probe behind it waited that long.
    assert max(health) < 1.0, f"a health check took {max(health):.2f} s"
    assert max(refusals) < 2.0, f"a refusal took {max(refusals):.2f} s"
    assert triton_calls(gw) == 0
    assert peak_rss_mib(gw) < 600  # the bomb decoded would be 3.6 GB


def test_unauthenticated_large_requests_are_refused_before_their_bodies_are_read(
    own_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"{hash_key(KEY)} tester\n")
    gw = own_gateway(api_keys_file=keys)
    body = bytes(16 * MiB)
    before = peak_rss_mib(gw)

    async def go() -> list[BaseException | None]:
        async with AsyncClient(gw.target, api_key="wrong", retry=NO_RETRY, timeout=60) as client:
            await client.health()

            async def one() -> BaseException | None:
                try:
                    await client.remove(body)
                except Exception as e:
                    return e
                return None

            return await asyncio.gather(*(one() for _ in range(16)))

    outcomes = asyncio.run(go())
    assert all(isinstance(e, Unauthenticated) for e in outcomes), outcomes
    # 16 x 16 MiB reached the servicer before; now no body is read, only what flow control let in.
    growth = peak_rss_mib(gw) - before
    assert growth < 64, f"the gateway grew by {growth:.0f} MiB for unauthenticated calls"
    assert gateway_metric(gw, "matteserve_gateway_requests_total", code="UNAUTHENTICATED") == 16
    with Client(gw.target, api_key=KEY, retry=NO_RETRY) as client:
        assert client.health() == "SERVING"


def test_a_stream_that_is_never_read_stops_the_gateway_reading_it(
    own_gateway: Callable[..., GatewayProcess], make_photo: Callable[..., bytes]
) -> None:
    window = 2
    gw = own_gateway(stream_window=window)
    photo = make_photo(1024, 1024)  # RAW answers of 1 MiB each, far above the caller's 64 KiB window
    before = peak_rss_mib(gw)

    def streamed() -> float:
        return gateway_metric(gw, "matteserve_gateway_requests_total", method="RemoveStream")

    def items() -> Iterator[pb.RemoveStreamRequest]:
        for i in range(32):
            yield pb.RemoveStreamRequest(id=str(i), request=build_request(photo, "raw"))

    options = [("grpc.max_receive_message_length", 64 * MiB), ("grpc.http2.bdp_probe", 0)]
    with grpc.insecure_channel(gw.target, options=options) as channel:
        call = pb_grpc.BackgroundRemovalStub(channel).RemoveStream(items(), timeout=120)
        try:
            deadline = time.monotonic() + 60
            while streamed() < window:
                assert time.monotonic() < deadline, "the stream never started"
                time.sleep(0.1)
            # Four images from another caller take as long as four more stream items would: on a
            # machine of any speed, a gateway still working on the unread stream shows it by then.
            with Client(gw.target, timeout=120) as other:
                for _ in range(4):
                    other.remove(photo, format="raw")
            worked = streamed()
        finally:
            call.cancel()
    assert worked == window, f"the gateway worked on {worked:.0f} images nobody read (window {window})"
    growth = peak_rss_mib(gw) - before
    assert growth < 80, f"the gateway grew by {growth:.0f} MiB holding unread results"


def test_a_result_too_large_for_the_caller_fails_once_with_what_to_do(
    own_gateway: Callable[..., GatewayProcess], make_photo: Callable[..., bytes]
) -> None:
    gw = own_gateway()
    photo = make_photo(600, 600)  # an RGBA PNG cutout of ~0.7 MB
    limit = 250_000
    before = triton_calls(gw)
    # Retries allowed: the gateway must say "too large", which the client must never send again.
    with Client(gw.target, max_message_bytes=limit, timeout=60) as client:
        with pytest.raises(MessageTooLarge, match="ask for OUTPUT_FORMAT_WEBP") as err:
            client.remove(photo, format="png")
        assert err.value.code is grpc.StatusCode.OUT_OF_RANGE
        assert triton_calls(gw) == before + 1
        with pytest.raises(MessageTooLarge, match=r"above the 0\.2 MiB"):
            client.remove(photo, format="raw")  # 360 KB, known before any work
        assert triton_calls(gw) == before + 1
        assert client.remove(photo, format="webp").content_type == "image/webp"  # the advice works
        (item,) = client.remove_stream([("big", photo)], format="png")
        assert isinstance(item.error, MessageTooLarge)

    async def aio() -> None:
        async with AsyncClient(gw.target, max_message_bytes=limit, timeout=60) as client:
            await client.remove(photo, format="png")

    calls = triton_calls(gw)
    with pytest.raises(MessageTooLarge):
        asyncio.run(aio())
    assert triton_calls(gw) == calls + 1


def test_the_gateway_sends_no_more_than_it_is_configured_to(
    own_gateway: Callable[..., GatewayProcess], make_photo: Callable[..., bytes]
) -> None:
    gw = own_gateway(max_message_bytes=250_000)
    with Client(gw.target, timeout=60) as client, pytest.raises(MessageTooLarge, match=r"0\.2 MiB a response may"):
        client.remove(make_photo(600, 600), format="png")


def test_bytes_that_are_not_a_request_get_invalid_argument_with_a_request_id(gateway: GatewayProcess) -> None:
    with grpc.insecure_channel(gateway.target) as channel:
        remove = channel.unary_unary(f"/{pb.DESCRIPTOR.package}.BackgroundRemoval/Remove")
        with pytest.raises(grpc.RpcError) as err:
            remove(b"\xff\xff\xff\xff garbage", timeout=10)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message" in err.value.details()
    assert "Error" not in err.value.details()  # no Python class names
    assert any(k == "x-request-id" for k, _ in err.value.trailing_metadata())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"format": "jpeg", "background": "²,0,0"}, "background must be"),
        ({"format": "jpeg", "background": "9" * 1_000_000}, "background must be"),
        ({"model": "m" * 100_000}, "model must be a model name"),
    ],
    ids=["unicode digit", "1 MB background", "100 KB model name"],
)
def test_bad_caller_strings_are_invalid_and_quoted_briefly(
    gateway_client: Client, make_photo: Callable[..., bytes], options: dict[str, str], message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message) as err:
        gateway_client.remove(make_photo(64, 64), **options)  # type: ignore[arg-type]
    assert len(str(err.value)) < 300


def test_errors_from_triton_name_no_internal_address_or_model(
    gateway_client: Client, gateway: GatewayProcess, make_photo: Callable[..., bytes]
) -> None:
    photo = make_photo(256, 256)
    truncated = photo[: photo.index(b"\xff\xda") + 40]  # a header that passes, pixels that do not
    with pytest.raises(InvalidRequest, match="truncated or corrupt") as err:
        gateway_client.remove(truncated)
    said = str(err.value)
    for internal in ("remove_background", "preprocess", "127.0.0.1", str(gateway.cfg.tritons[0])):
        assert internal not in said
