"""What a gateway runs with: listen addresses, Triton endpoints, limits, auth and TLS."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from matteserve import api
from matteserve.errors import MatteserveError
from matteserve.pipeline.decode import ImageLimits

DEFAULT_PORT = 50051
DEFAULT_METRICS_PORT = 8090
DEFAULT_TRITON = "127.0.0.1:8001"


class ConfigError(MatteserveError):
    """The gateway cannot start with these settings; the message says what to change."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class TLSConfig:
    cert: Path
    key: Path
    client_ca: Path | None = None  # set: clients must present a certificate signed by it (mutual TLS)


@dataclass(frozen=True)
class GatewayConfig:
    tritons: tuple[str, ...] = (DEFAULT_TRITON,)
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    metrics_host: str = "127.0.0.1"
    metrics_port: int = DEFAULT_METRICS_PORT
    max_message_bytes: int = api.MAX_MESSAGE_BYTES  # received and sent
    max_pixels: int = ImageLimits.max_pixels
    max_in_flight: int = 64  # a hard cap on memory; admission below usually refuses well before it
    # Admission (gateway/admission.py): a request whose estimated wait for the backends exceeds this
    # is refused at once with RESOURCE_EXHAUSTED, so an admitted one waits about this long at most.
    queue_budget_s: float = 2.0
    # Images always admitted whatever the estimate: enough to keep the Tritons busy (a batch each).
    min_in_flight: int = 4
    # Images of at least this many pixels go to the big lane: a few at a time, and behind small ones.
    big_image_pixels: int = 8_000_000
    big_in_flight: int = 1
    # While no Triton endpoint is ready, a request waits this long (within its deadline) for one.
    backend_wait_s: float = 15.0
    # Items of one RemoveStream worked on at once; the stream is not read further until one finishes.
    stream_window: int = 8
    triton_timeout_s: float = 120.0  # when the caller sets no deadline
    health_interval_s: float = 1.0
    grace_s: float = 20.0
    api_keys_file: Path | None = None
    api_key_hashes: tuple[str, ...] = ()  # "sha256:<hex>", e.g. from MATTESERVE_API_KEY_HASHES
    tls: TLSConfig | None = None
    json_logs: bool = False

    def __post_init__(self) -> None:
        if not self.tritons:
            raise ConfigError("give at least one Triton gRPC endpoint, e.g. --triton 127.0.0.1:8001")
        for name in (
            "max_message_bytes",
            "max_pixels",
            "max_in_flight",
            "stream_window",
            "big_image_pixels",
            "min_in_flight",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.triton_timeout_s <= 0 or self.health_interval_s <= 0 or self.grace_s < 0:
            raise ConfigError("timeouts and intervals must be positive")
        if self.queue_budget_s <= 0 or self.backend_wait_s < 0 or self.big_in_flight < 1:
            raise ConfigError(
                "--queue-budget must be > 0 s, --backend-wait >= 0 s and --big-in-flight >= 1 "
                f"(got {self.queue_budget_s}, {self.backend_wait_s}, {self.big_in_flight})"
            )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.metrics_host}:{self.metrics_port}/metrics"

    @property
    def limits(self) -> ImageLimits:
        return ImageLimits(max_pixels=self.max_pixels)

    def to_args(self) -> list[str]:
        """The command-line arguments of ``python -m matteserve.gateway`` that give this config."""
        args = [f"--triton={t}" for t in self.tritons]
        args += [
            f"--host={self.host}",
            f"--port={self.port}",
            f"--metrics-host={self.metrics_host}",
            f"--metrics-port={self.metrics_port}",
            f"--max-message-bytes={self.max_message_bytes}",
            f"--max-pixels={self.max_pixels}",
            f"--max-in-flight={self.max_in_flight}",
            f"--stream-window={self.stream_window}",
            f"--queue-budget={self.queue_budget_s}",
            f"--min-in-flight={self.min_in_flight}",
            f"--big-image-pixels={self.big_image_pixels}",
            f"--big-in-flight={self.big_in_flight}",
            f"--backend-wait={self.backend_wait_s}",
            f"--triton-timeout={self.triton_timeout_s}",
            f"--health-interval={self.health_interval_s}",
            f"--grace={self.grace_s}",
        ]
        if self.api_keys_file is not None:
            args.append(f"--api-keys-file={self.api_keys_file}")
        args += [f"--api-key-hash={h}" for h in self.api_key_hashes]
        if self.tls is not None:
            args += [f"--tls-cert={self.tls.cert}", f"--tls-key={self.tls.key}"]
            if self.tls.client_ca is not None:
                args.append(f"--tls-client-ca={self.tls.client_ca}")
        if self.json_logs:
            args.append("--log-format=json")
        return args
