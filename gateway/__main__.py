"""``python -m matteserve.gateway``: run the gateway in front of one or more Triton servers.

``matteserve serve`` starts it next to Triton; run it alone to put it in front of Tritons elsewhere.
"""

from __future__ import annotations

import asyncio
import enum
import os
from pathlib import Path
from typing import Annotated

import typer

from matteserve.errors import MatteserveError
from matteserve.gateway import config as c
from matteserve.logs import configure

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


class LogFormat(str, enum.Enum):
    TEXT = "text"
    JSON = "json"


@app.command()
def main(
    triton: Annotated[
        list[str],
        typer.Option(
            help="Triton gRPC endpoint host:port, or dns:///name:port for one endpoint per address "
            "the name resolves to; repeat for several."
        ),
    ] = [  # noqa: B006
        c.DEFAULT_TRITON
    ],
    host: Annotated[str, typer.Option(help="Address to listen on (non-loopback needs API keys).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="gRPC port.")] = c.DEFAULT_PORT,
    metrics_host: Annotated[str, typer.Option(help="Address of the Prometheus /metrics server.")] = "127.0.0.1",
    metrics_port: Annotated[int, typer.Option(help="Port of the Prometheus /metrics server.")] = c.DEFAULT_METRICS_PORT,
    max_message_bytes: Annotated[
        int, typer.Option(help="Largest message received or sent; larger results get OUT_OF_RANGE.")
    ] = c.GatewayConfig.max_message_bytes,
    max_pixels: Annotated[int, typer.Option(help="Largest image, in pixels (from its header).")] = (
        c.GatewayConfig.max_pixels
    ),
    max_in_flight: Annotated[int, typer.Option(help="Images worked on at once; more get RESOURCE_EXHAUSTED.")] = (
        c.GatewayConfig.max_in_flight
    ),
    queue_budget: Annotated[
        float, typer.Option(help="Seconds an image may be expected to wait for Triton; beyond, RESOURCE_EXHAUSTED.")
    ] = c.GatewayConfig.queue_budget_s,
    min_in_flight: Annotated[
        int, typer.Option(help="Images always admitted, whatever the estimate (keeps the Tritons busy).")
    ] = c.GatewayConfig.min_in_flight,
    big_image_pixels: Annotated[
        int, typer.Option(help="Images of this many pixels or more go to the big lane (lower priority).")
    ] = c.GatewayConfig.big_image_pixels,
    big_in_flight: Annotated[int, typer.Option(help="Big-lane images worked on at once.")] = (
        c.GatewayConfig.big_in_flight
    ),
    backend_wait: Annotated[
        float, typer.Option(help="Seconds a call waits (within its deadline) for a Triton endpoint to be ready.")
    ] = c.GatewayConfig.backend_wait_s,
    stream_window: Annotated[int, typer.Option(help="Images of one RemoveStream worked on at once.")] = (
        c.GatewayConfig.stream_window
    ),
    triton_timeout: Annotated[float, typer.Option(help="Seconds a call may take when the caller sets none.")] = (
        c.GatewayConfig.triton_timeout_s
    ),
    health_interval: Annotated[float, typer.Option(help="Seconds between Triton health checks.")] = (
        c.GatewayConfig.health_interval_s
    ),
    grace: Annotated[float, typer.Option(help="Seconds in-flight requests get to finish on SIGTERM.")] = (
        c.GatewayConfig.grace_s
    ),
    api_keys_file: Annotated[Path | None, typer.Option(help="File of 'sha256:<hex>' API key hashes.")] = None,
    api_key_hash: Annotated[list[str] | None, typer.Option(help="An API key hash; repeat for several.")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="Server certificate (PEM) to serve TLS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Server private key (PEM).")] = None,
    tls_client_ca: Annotated[
        Path | None, typer.Option(help="CA (PEM) client certificates must chain to (mTLS).")
    ] = None,
    log_format: Annotated[LogFormat, typer.Option(help="json: one object per line, for log collectors.")] = (
        LogFormat.TEXT
    ),
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Serve matteserve.v1.BackgroundRemoval over gRPC in front of Triton."""
    configure(10 if verbose else 20, json_format=log_format is LogFormat.JSON)
    if (tls_cert is None) != (tls_key is None) or (tls_client_ca is not None and tls_cert is None):
        raise typer.BadParameter("TLS needs both --tls-cert and --tls-key (and --tls-client-ca only with them)")
    try:
        cfg = c.GatewayConfig(
            tritons=tuple(triton),
            host=host,
            port=port,
            metrics_host=metrics_host,
            metrics_port=metrics_port,
            max_message_bytes=max_message_bytes,
            max_pixels=max_pixels,
            max_in_flight=max_in_flight,
            queue_budget_s=queue_budget,
            min_in_flight=min_in_flight,
            big_image_pixels=big_image_pixels,
            big_in_flight=big_in_flight,
            backend_wait_s=backend_wait,
            stream_window=stream_window,
            triton_timeout_s=triton_timeout,
            health_interval_s=health_interval,
            grace_s=grace,
            api_keys_file=api_keys_file,
            api_key_hashes=tuple(api_key_hash or ()),
            tls=c.TLSConfig(tls_cert, tls_key, tls_client_ca) if tls_cert and tls_key else None,
            json_logs=log_format is LogFormat.JSON,
        )
        from matteserve.gateway.server import serve

        asyncio.run(serve(cfg))
    except MatteserveError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise SystemExit(os.EX_CONFIG) from None


if __name__ == "__main__":
    app()
