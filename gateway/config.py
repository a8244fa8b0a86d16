"""What a gateway runs with: listen addresses, Triton endpoints, limits, auth and TLS."""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any

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


class LogFormat(str, enum.Enum):
    TEXT = "text"
    JSON = "json"


@dataclass(frozen=True)
class TLSConfig:
    cert: Path
    key: Path
    client_ca: Path | None = None  # set: clients must present a certificate signed by it (mutual TLS)


def cli(help: str, flag: str | None = None) -> dict[str, Any]:
    """A field's command-line help: ``matteserve gateway``'s options and the argv that ``GatewayProcess``
    passes are both derived from the fields. The flag is the field's name in kebab case, without a
    ``_s`` unit suffix, unless given."""
    return {"help": help, "flag": flag}


def flag_of(f: Field[Any]) -> str:
    return f.metadata["flag"] or f.name.removesuffix("_s").replace("_", "-")


@dataclass(frozen=True)
class GatewayConfig:
    tritons: tuple[str, ...] = field(
        default=(DEFAULT_TRITON,),
        metadata=cli(
            "Triton gRPC endpoint host:port, or dns:///name:port for one endpoint per address the name resolves "
            "to; repeat for several.",
            flag="triton",
        ),
    )
    host: str = field(default="127.0.0.1", metadata=cli("Address to listen on (non-loopback needs API keys)."))
    port: int = field(default=DEFAULT_PORT, metadata=cli("gRPC port."))
    metrics_host: str = field(default="127.0.0.1", metadata=cli("Address of the Prometheus /metrics server."))
    metrics_port: int = field(default=DEFAULT_METRICS_PORT, metadata=cli("Port of the Prometheus /metrics server."))
    max_message_bytes: int = field(
        default=api.MAX_MESSAGE_BYTES,
        metadata=cli("Largest message received or sent; larger results get OUT_OF_RANGE."),
    )
    max_pixels: int = field(default=ImageLimits.max_pixels, metadata=cli("Largest image, in pixels (from its header)."))
    # A hard cap on memory; admission below usually refuses well before it.
    max_in_flight: int = field(default=64, metadata=cli("Images worked on at once; more get RESOURCE_EXHAUSTED."))
    # Admission (gateway/admission.py): a request whose estimated wait for the backends exceeds this
    # is refused at once with RESOURCE_EXHAUSTED, so an admitted one waits about this long at most.
    queue_budget_s: float = field(
        default=2.0, metadata=cli("Seconds an image may be expected to wait for Triton; beyond, RESOURCE_EXHAUSTED.")
    )
    min_in_flight: int = field(
        default=4, metadata=cli("Images always admitted, whatever the estimate (keeps the Tritons busy).")
    )
    big_image_pixels: int = field(
        default=8_000_000,
        metadata=cli("Images of this many pixels or more go to the big lane (a few at a time, lower priority)."),
    )
    big_in_flight: int = field(default=1, metadata=cli("Big-lane images worked on at once."))
    backend_wait_s: float = field(
        default=15.0, metadata=cli("Seconds a call waits (within its deadline) for a Triton endpoint to be ready.")
    )
    # The stream is not read further until one of these finishes.
    stream_window: int = field(default=8, metadata=cli("Images of one RemoveStream worked on at once."))
    triton_timeout_s: float = field(default=120.0, metadata=cli("Seconds a call may take when the caller sets none."))
    health_interval_s: float = field(default=1.0, metadata=cli("Seconds between Triton health checks."))
    grace_s: float = field(default=20.0, metadata=cli("Seconds in-flight requests get to finish on SIGTERM."))
    api_keys_file: Path | None = field(default=None, metadata=cli("File of 'sha256:<hex>' API key hashes."))
    api_key_hashes: tuple[str, ...] = field(
        default=(), metadata=cli("An API key hash; repeat for several.", flag="api-key-hash")
    )
    tls_cert: Path | None = field(default=None, metadata=cli("Server certificate (PEM) to serve TLS."))
    tls_key: Path | None = field(default=None, metadata=cli("Server private key (PEM)."))
    tls_client_ca: Path | None = field(default=None, metadata=cli("CA (PEM) client certificates must chain to (mTLS)."))
    log_format: LogFormat = field(
        default=LogFormat.TEXT, metadata=cli("json: one object per line, for log collectors.")
    )

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
        if (self.tls_cert is None) != (self.tls_key is None) or (self.tls_client_ca and self.tls_cert is None):
            raise ConfigError("TLS needs both --tls-cert and --tls-key (and --tls-client-ca only with them)")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.metrics_host}:{self.metrics_port}/metrics"

    @property
    def limits(self) -> ImageLimits:
        return ImageLimits(max_pixels=self.max_pixels)

    @property
    def tls(self) -> TLSConfig | None:
        if self.tls_cert is None or self.tls_key is None:
            return None
        return TLSConfig(self.tls_cert, self.tls_key, self.tls_client_ca)

    def to_args(self) -> list[str]:
        """The options of ``matteserve gateway`` that give this config."""
        args = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            for item in value if isinstance(value, tuple) else (value,):
                args.append(f"--{flag_of(f)}={item.value if isinstance(item, enum.Enum) else item}")
        return args
