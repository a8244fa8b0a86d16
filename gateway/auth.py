"""API keys: callers send ``authorization: Bearer <key>``; the gateway keeps only SHA-256 hashes.

Keys are long random strings (``matteserve api-key new``), not passwords, so a plain
SHA-256 is enough: nothing to brute-force, and checking stays cheap on every request.
Hash file: one ``sha256:<64 hex>`` per line, optionally followed by a name; ``#`` starts a comment.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from matteserve.errors import Unauthenticated
from matteserve.gateway.config import ConfigError

ENV_HASHES = "MATTESERVE_API_KEY_HASHES"
PREFIX = "sha256:"


def hash_key(key: str) -> str:
    return PREFIX + hashlib.sha256(key.encode()).hexdigest()


def parse_hash(text: str, where: str) -> str:
    value = text.strip().lower()
    digest = value.removeprefix(PREFIX)
    if not value.startswith(PREFIX) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ConfigError(f"{where}: expected 'sha256:<64 hex digits>' (see matteserve api-key --help)")
    return value


def read_hash_file(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read the API key file {path}: {e}") from e
    hashes = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if text:
            hashes.append(parse_hash(text.split()[0], f"{path}:{number}"))
    return hashes


@dataclass(frozen=True)
class KeyRing:
    hashes: frozenset[str]

    @classmethod
    def load(cls, file: Path | None, hashes: Iterable[str] = (), env: dict[str, str] | None = None) -> KeyRing:
        found = [parse_hash(h, "--api-key-hash") for h in hashes]
        if file is not None:
            found += read_hash_file(file)
        env_value = (os.environ if env is None else env).get(ENV_HASHES, "")
        found += [parse_hash(h, ENV_HASHES) for h in env_value.split(",") if h.strip()]
        return cls(frozenset(found))

    @property
    def enabled(self) -> bool:
        return bool(self.hashes)

    def check(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        """Raise Unauthenticated unless the metadata carries a known bearer key (no-op without keys)."""
        if not self.enabled:
            return
        header = next((str(v) for k, v in metadata if k == "authorization"), None)
        if header is None:
            raise Unauthenticated("missing 'authorization: Bearer <api key>' metadata")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("the authorization metadata must be 'Bearer <api key>'")
        presented = hash_key(key.strip())
        # Compare against every hash so the time taken does not say which prefix matched.
        matched = False
        for known in self.hashes:
            matched |= hmac.compare_digest(presented, known)
        if not matched:
            raise Unauthenticated("the API key is not valid")
