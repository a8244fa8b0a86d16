"""Gateway settings: validated where they are built, and the launcher's arguments match the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from matteserve.gateway.__main__ import app
from matteserve.gateway.config import ConfigError, GatewayConfig, TLSConfig


def test_every_argument_the_launcher_passes_is_an_option_of_the_gateway_command() -> None:
    cfg = GatewayConfig(
        tritons=("a:1", "b:2"),
        api_keys_file=Path("keys"),
        api_key_hashes=("sha256:" + "0" * 64,),
        tls=TLSConfig(Path("c.pem"), Path("k.pem"), Path("ca.pem")),
        json_logs=True,
    )
    options = {opt for param in typer.main.get_command(app).params for opt in param.opts}
    passed = {arg.split("=", 1)[0] for arg in cfg.to_args()}
    assert passed <= options
    assert {"--triton", "--tls-client-ca", "--api-key-hash", "--log-format"} <= passed


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"tritons": ()}, "at least one Triton"),
        ({"max_in_flight": 0}, "max_in_flight must be at least 1"),
        ({"max_pixels": 0}, "max_pixels must be at least 1"),
        ({"triton_timeout_s": 0}, "must be positive"),
    ],
)
def test_impossible_settings_are_refused_with_what_to_change(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        GatewayConfig(**settings)  # type: ignore[arg-type]
