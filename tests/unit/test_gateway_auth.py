"""API keys: only hashes are stored; the bearer key in the metadata must match one of them."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from matteserve.cli import app
from matteserve.errors import Unauthenticated
from matteserve.gateway.auth import ENV_HASHES, KeyRing, hash_key
from matteserve.gateway.config import ConfigError, GatewayConfig, is_loopback
from matteserve.gateway.server import check_exposure


def test_keys_load_from_a_file_of_hashes_with_comments_and_names(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# who\n{hash_key('alpha')} team-a\n\n{hash_key('beta').upper().replace('SHA256', 'sha256')}\n")
    keys = KeyRing.load(path, env={})
    assert keys.hashes == {hash_key("alpha"), hash_key("beta")}


def test_keys_load_from_the_environment_and_flags() -> None:
    keys = KeyRing.load(None, [hash_key("flag")], env={ENV_HASHES: f"{hash_key('a')}, {hash_key('b')}"})
    assert keys.hashes == {hash_key("flag"), hash_key("a"), hash_key("b")}


@pytest.mark.parametrize("line", ["alpha", "sha256:1234", "md5:" + "0" * 32, "sha256:" + "g" * 64])
def test_a_plain_key_or_malformed_hash_is_refused_with_a_line_number(tmp_path: Path, line: str) -> None:
    path = tmp_path / "keys"
    path.write_text(f"{hash_key('ok')}\n{line}\n")
    with pytest.raises(ConfigError, match=f"{path}:2: expected 'sha256:<64 hex digits>'"):
        KeyRing.load(path, env={})


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ([], "missing 'authorization: Bearer"),
        ([("authorization", "Basic YWxwaGE=")], "must be 'Bearer <api key>'"),
        ([("authorization", "Bearer ")], "must be 'Bearer <api key>'"),
        ([("authorization", "Bearer gamma")], "not valid"),
    ],
)
def test_missing_malformed_or_unknown_keys_are_unauthenticated(metadata: list[tuple[str, str]], message: str) -> None:
    keys = KeyRing(frozenset({hash_key("alpha")}))
    with pytest.raises(Unauthenticated, match=message):
        keys.check(metadata)


def test_a_known_key_passes_and_no_keys_means_no_check() -> None:
    KeyRing(frozenset({hash_key("alpha"), hash_key("beta")})).check([("authorization", "Bearer beta")])
    KeyRing(frozenset()).check([])


def test_without_keys_the_gateway_refuses_to_listen_beyond_loopback() -> None:
    with pytest.raises(ConfigError, match=r"only binds to loopback, not 0\.0\.0\.0"):
        check_exposure(GatewayConfig(host="0.0.0.0"), KeyRing(frozenset()))
    check_exposure(GatewayConfig(host="0.0.0.0"), KeyRing(frozenset({hash_key("k")})))
    check_exposure(GatewayConfig(host="127.0.0.1"), KeyRing(frozenset()))


def test_without_keys_metrics_are_not_served_beyond_loopback_either() -> None:
    with pytest.raises(ConfigError, match=r"not 0\.0\.0\.0 \(--metrics-host\)"):
        check_exposure(GatewayConfig(metrics_host="0.0.0.0"), KeyRing(frozenset()))
    check_exposure(GatewayConfig(host="0.0.0.0", metrics_host="0.0.0.0"), KeyRing(frozenset({hash_key("k")})))


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("10.1.2.3", False), ("[::]", False)],
)
def test_loopback_addresses_are_recognised(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_api_key_new_prints_a_key_and_the_hash_to_store() -> None:
    result = CliRunner().invoke(app, ["api-key", "new"])
    assert result.exit_code == 0, result.output
    key = result.stdout.split("key (give to the caller): ")[1].split()[0]
    assert f"hash (put in the gateway's key file): {hash_key(key)}" in result.stdout


def test_api_key_hash_hashes_the_key_read_from_stdin() -> None:
    result = CliRunner().invoke(app, ["api-key", "hash"], input="alpha\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == hash_key("alpha") + "\n"
