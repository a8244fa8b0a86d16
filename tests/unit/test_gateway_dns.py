"""A ``dns:///name:port`` Triton target follows what the name resolves to (a headless Service)."""

from __future__ import annotations

from matteserve.gateway.backends import TritonPool, resolve_ips
from matteserve.gateway.metrics import GatewayMetrics


class FakeDns:
    def __init__(self, *answers: list[str] | OSError) -> None:
        self.answers = list(answers)

    async def __call__(self, host: str, port: int) -> list[str]:
        assert (host, port) == ("triton-headless", 8001)
        answer = self.answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer


def urls(pool: TritonPool) -> list[str]:
    return sorted(ep.url for ep in pool.endpoints)


async def test_pods_join_and_leave_the_pool_as_the_name_resolves() -> None:
    dns = FakeDns(["10.0.0.1"], ["10.0.0.1", "10.0.0.2"], OSError("lookup failed"), ["10.0.0.2"])
    pool = TritonPool(("dns:///triton-headless:8001", "127.0.0.1:9"), GatewayMetrics(), resolve=dns)
    try:
        assert urls(pool) == ["127.0.0.1:9"]
        await pool.refresh_dns()
        assert urls(pool) == ["10.0.0.1:8001", "127.0.0.1:9"]
        await pool.refresh_dns()  # scaled up
        assert urls(pool) == ["10.0.0.1:8001", "10.0.0.2:8001", "127.0.0.1:9"]
        await pool.refresh_dns()  # a failed lookup keeps what is known
        assert urls(pool) == ["10.0.0.1:8001", "10.0.0.2:8001", "127.0.0.1:9"]
        await pool.refresh_dns()  # scaled down; the static endpoint stays
        assert urls(pool) == ["10.0.0.2:8001", "127.0.0.1:9"]
        exported = {s.labels["endpoint"] for m in pool.metrics.registry.collect() for s in m.samples
                    if s.name == "matteserve_gateway_triton_endpoint_up"}  # fmt: skip
        assert exported == {"10.0.0.2:8001", "127.0.0.1:9"}
    finally:
        await pool.close()


async def test_localhost_resolves_to_ipv4_loopback() -> None:
    assert await resolve_ips("localhost", 8001) == ["127.0.0.1"]
