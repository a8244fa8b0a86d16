"""Gateway settings: one definition, from which `matteserve gateway`, `matteserve serve` and the launcher's
argv all come, validated where they are built."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from matteserve import container
from matteserve.cli import app
from matteserve.gateway import server
from matteserve.gateway.config import ConfigError, GatewayConfig, LogFormat

# Every setting away from its default, so that each one must cross the command line to arrive.
EVERY_SETTING = GatewayConfig(
    tritons=("a:1", "dns:///b:2"),
    host="0.0.0.0",
    port=1,
    metrics_host="::1",
    metrics_port=2,
    max_message_bytes=3,
    max_pixels=4,
    max_in_flight=5,
    queue_budget_s=0.5,
    min_in_flight=6,
    big_image_pixels=7,
    big_in_flight=8,
    backend_wait_s=0.25,
    stream_window=9,
    triton_timeout_s=10.5,
    health_interval_s=0.125,
    grace_s=11.5,
    api_keys_file=Path("keys"),
    api_key_hashes=("sha256:" + "0" * 64, "sha256:" + "1" * 64),
    tls_cert=Path("c.pem"),
    tls_key=Path("k.pem"),
    tls_client_ca=Path("ca.pem"),
    log_format=LogFormat.JSON,
)


def options(command: str) -> set[str]:
    click_app = typer.main.get_command(app)
    return {opt for param in click_app.commands[command].params for opt in param.opts}  # type: ignore[attr-defined]


def test_every_setting_reaches_the_gateway_command_through_the_argv_the_launcher_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert all(getattr(EVERY_SETTING, f.name) != f.default for f in fields(GatewayConfig))
    served: list[GatewayConfig] = []

    async def serve(cfg: GatewayConfig) -> None:
        served.append(cfg)

    monkeypatch.setattr(server, "serve", serve)
    monkeypatch.setattr(container, "tune_allocator", lambda env: [])  # not this test process's allocator
    result = CliRunner().invoke(app, ["gateway", *EVERY_SETTING.to_args()])
    assert result.exit_code == 0, result.output
    assert served == [EVERY_SETTING]


def test_serve_offers_every_gateway_option_but_the_tritons_and_the_image_limit_it_sets_itself() -> None:
    gateway = options("gateway") - {"--help", "--verbose", "-v"}
    assert {f"--gateway-{opt.removeprefix('--')}" for opt in gateway - {"--triton", "--max-pixels"}} <= options("serve")
    assert "--max-pixels" in options("serve")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"tritons": ()}, "at least one Triton"),
        ({"max_in_flight": 0}, "max_in_flight must be at least 1"),
        ({"max_pixels": 0}, "max_pixels must be at least 1"),
        ({"triton_timeout_s": 0}, "must be positive"),
        ({"tls_cert": Path("c.pem")}, "TLS needs both --tls-cert and --tls-key"),
        ({"tls_client_ca": Path("ca.pem")}, "--tls-client-ca only with them"),
    ],
)
def test_impossible_settings_are_refused_with_what_to_change(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        GatewayConfig(**settings)  # type: ignore[arg-type]
