"""Limits and auth on a real gateway: in-flight, message size, pixels, deadlines, API keys."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from matteserve.client import AsyncClient, Client, RetryPolicy
from matteserve.client.errors import InvalidRequest, MessageTooLarge, RemoteError, Timeout, Unauthenticated
from matteserve.gateway import GatewayProcess
from matteserve.gateway.auth import hash_key
from matteserve.tritonserver import TritonServer

from ..conftest import gateway_fixture, gateway_metric, start_gateway  # type: ignore[import-not-found]

NO_RETRY = RetryPolicy(attempts=1)
KEY = "test-key-0123456789abcdef"


limited = gateway_fixture("limited", max_in_flight=2, max_message_bytes=300_000, max_pixels=200_000)


def test_requests_beyond_the_in_flight_limit_get_resource_exhausted_at_once(
    limited: GatewayProcess, make_photo: Callable[..., bytes]
) -> None:
    photo = make_photo(256, 256)

    async def burst() -> list[tuple[str, float]]:
        async with AsyncClient(limited.target, retry=NO_RETRY, timeout=120) as client:
            await client.health()  # connected before the burst, so all six arrive together
            start = time.monotonic()

            async def one() -> tuple[str, float]:
                try:
                    await client.remove(photo, format="mask")
                    outcome = "OK"
                except RemoteError as e:
                    outcome = e.code.name
                return outcome, time.monotonic() - start

            return await asyncio.gather(*(one() for _ in range(6)))

    outcomes = asyncio.run(burst())
    codes = sorted(code for code, _ in outcomes)
    assert codes == ["OK"] * 2 + ["RESOURCE_EXHAUSTED"] * 4
    first_success = min(t for code, t in outcomes if code == "OK")
    assert all(t < first_success for code, t in outcomes if code != "OK"), "rejections must not wait in a queue"


def test_a_message_above_the_size_limit_gets_resource_exhausted(limited: GatewayProcess) -> None:
    with Client(limited.target, retry=NO_RETRY) as client, pytest.raises(MessageTooLarge) as err:
        client.remove(b"\xff" * 400_000)
    assert err.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in str(err.value)


def test_an_image_above_the_pixel_limit_is_refused_before_triton(
    limited: GatewayProcess, make_photo: Callable[..., bytes]
) -> None:
    calls_before = gateway_metric(limited, "matteserve_gateway_triton_duration_seconds_count")
    with Client(limited.target, retry=NO_RETRY) as client, pytest.raises(InvalidRequest) as err:
        client.remove(make_photo(500, 500))
    assert "500x500 = 0.2 MP, above the 0.2 MP limit" in str(err.value)
    assert gateway_metric(limited, "matteserve_gateway_triton_duration_seconds_count") == calls_before


def test_the_callers_deadline_reaches_triton(
    limited: GatewayProcess, triton: TritonServer, make_photo: Callable[..., bytes]
) -> None:
    """A paused Triton never answers: only the deadline the gateway passed on can end its call."""
    assert triton.process is not None
    errors_before = gateway_metric(limited, "matteserve_gateway_triton_errors_total", code="DEADLINE_EXCEEDED")
    os.kill(triton.process.pid, signal.SIGSTOP)
    try:
        with Client(limited.target, retry=NO_RETRY) as client, pytest.raises(Timeout) as err:
            client.remove(make_photo(256, 256), timeout=1.0)
    finally:
        os.kill(triton.process.pid, signal.SIGCONT)
    assert "did not answer before the deadline" in str(err.value)  # the gateway's answer, not the client's
    assert (
        gateway_metric(limited, "matteserve_gateway_triton_errors_total", code="DEADLINE_EXCEEDED") == errors_before + 1
    )
    with Client(limited.target) as client:
        deadline = time.monotonic() + 15
        while client.health() != "SERVING":  # the paused probe marked Triton down for a moment
            assert time.monotonic() < deadline
            time.sleep(0.2)


@pytest.fixture(scope="module")
def keyed(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    folder = tmp_path_factory.mktemp("keyed")
    keys = folder / "api-keys.txt"
    keys.write_text(f"# team photos\n{hash_key(KEY)} photos-service\n")
    gw = start_gateway([triton.cfg.grpc_url], folder, api_keys_file=keys)
    yield gw
    gw.stop()


@pytest.mark.parametrize("api_key", [None, "wrong-key"], ids=["missing key", "wrong key"])
def test_a_missing_or_wrong_key_gets_unauthenticated(
    keyed: GatewayProcess, make_photo: Callable[..., bytes], api_key: str | None
) -> None:
    with Client(keyed.target, api_key=api_key, retry=NO_RETRY) as client:
        with pytest.raises(Unauthenticated) as err:
            client.remove(make_photo(64, 64))
        assert err.value.code is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(Unauthenticated):
            list(client.remove_stream([("a", make_photo(64, 64))]))
        assert client.health() == "SERVING"  # probes need no key


def test_the_right_key_passes(keyed: GatewayProcess, make_photo: Callable[..., bytes]) -> None:
    with Client(keyed.target, api_key=KEY, retry=NO_RETRY) as client:
        result = client.remove(make_photo(64, 64), format="mask")
    assert (result.width, result.height) == (64, 64)


def test_the_key_file_holds_only_hashes(keyed: GatewayProcess) -> None:
    assert keyed.cfg.api_keys_file is not None
    text = Path(keyed.cfg.api_keys_file).read_text()
    assert KEY not in text
    assert hash_key(KEY) in text
