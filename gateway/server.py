"""Run the gateway: gRPC server (service, health, reflection), Triton pool, metrics, graceful stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from matteserve.api.v1 import matteserve_pb2_grpc as pb_grpc
from matteserve.gateway.auth import KeyRing
from matteserve.gateway.backends import TritonPool
from matteserve.gateway.config import ConfigError, GatewayConfig, is_loopback
from matteserve.gateway.interceptors import CallInterceptor
from matteserve.gateway.metrics import GatewayMetrics
from matteserve.gateway.service import SERVICE_NAME, BackgroundRemovalService

logger = logging.getLogger(__name__)


def check_exposure(cfg: GatewayConfig, keys: KeyRing) -> None:
    """Without API keys anyone who can connect may call: allow that on loopback only.

    /metrics carries no caller data but tells anyone who can reach it how busy the service is and
    which Triton endpoints it uses: off loopback only where the gRPC port is protected too.
    """
    if keys.enabled:
        logger.info("authentication on: %d API key hash(es) loaded", len(keys.hashes))
        if not is_loopback(cfg.metrics_host):
            logger.warning("/metrics is served without authentication on %s", cfg.metrics_url)
        return
    for flag, host in (("--host", cfg.host), ("--metrics-host", cfg.metrics_host)):
        if not is_loopback(host):
            raise ConfigError(
                f"no API keys are configured, so the gateway only binds to loopback, not {host} ({flag}); "
                "give --api-keys-file or MATTESERVE_API_KEY_HASHES (matteserve api-key new)"
            )
    logger.warning("no API keys configured: authentication is off, listening on loopback %s only", cfg.address)


def server_credentials(cfg: GatewayConfig) -> grpc.ServerCredentials | None:
    if cfg.tls is None:
        return None
    try:
        pair = (cfg.tls.key.read_bytes(), cfg.tls.cert.read_bytes())
        ca = cfg.tls.client_ca.read_bytes() if cfg.tls.client_ca else None
    except OSError as e:
        raise ConfigError(f"cannot read a TLS file: {e}") from e
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


class Gateway:
    """The gateway inside a running event loop: ``await start()``, then ``await stop()``."""

    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        self.keys = KeyRing.load(cfg.api_keys_file, cfg.api_key_hashes)
        check_exposure(cfg, keys=self.keys)
        self.metrics = GatewayMetrics()
        self.health = health.aio.HealthServicer()
        self.pool = TritonPool(
            cfg.tritons, self.metrics, cfg.health_interval_s, cfg.backend_wait_s, on_readiness=self._readiness
        )
        self.service = BackgroundRemovalService(cfg, self.pool, self.metrics)
        options: list[tuple[str, Any]] = [
            # One value both ways, the clients' default too: a result is refused by the service
            # (OUT_OF_RANGE, with what to do) before gRPC could fail to send it.
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a second gateway on a taken port must fail, not share it
        ]
        interceptor = CallInterceptor(SERVICE_NAME, self.keys, self.metrics)
        self.server = grpc.aio.server(options=options, interceptors=[interceptor])
        pb_grpc.add_BackgroundRemovalServicer_to_server(self.service, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self._health_updates: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        credentials = server_credentials(self.cfg)
        try:
            if credentials is None:
                self.server.add_insecure_port(self.cfg.address)
            else:
                self.server.add_secure_port(self.cfg.address, credentials)
        except RuntimeError as e:
            raise ConfigError(f"cannot listen on {self.cfg.address}: {e}") from e
        self._readiness(False)
        self.metrics.serve(self.cfg.metrics_host, self.cfg.metrics_port)
        await self.server.start()
        await self.pool.start()
        logger.info(
            "gateway listening on %s (%s), metrics on %s, Triton: %s",
            self.cfg.address,
            "TLS" if self.cfg.tls else "plaintext",
            self.cfg.metrics_url,
            ", ".join(self.cfg.tritons),
        )

    async def stop(self) -> None:
        """Stop taking new calls and give those in flight ``grace_s`` to finish."""
        logger.info("shutting down: %d request(s) in flight, grace %.0f s", self.service.in_flight, self.cfg.grace_s)
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.cfg.grace_s)
        await self.pool.close()
        self.service.header_pool.shutdown(wait=False)
        logger.info("gateway stopped")

    def _readiness(self, ready: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            task = asyncio.get_running_loop().create_task(self.health.set(name, status))
            self._health_updates.add(task)
            task.add_done_callback(self._health_updates.discard)


async def serve(cfg: GatewayConfig) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    gateway = Gateway(cfg)
    await gateway.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await gateway.stop()
