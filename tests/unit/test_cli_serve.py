"""`matteserve serve` keeps Triton, which has no authentication, on loopback unless told otherwise."""

from __future__ import annotations

from typer.testing import CliRunner

from matteserve.cli import app


def test_serve_refuses_to_bind_triton_beyond_loopback_without_expose_triton() -> None:
    result = CliRunner().invoke(app, ["serve", "--address", "0.0.0.0"])
    assert result.exit_code == 2
    assert "Triton has no authentication" in result.output
    assert "--expose-triton" in result.output
