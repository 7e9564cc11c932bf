"""Shared fixtures: vector locations, optional servers, and no network."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT.parent / "shared" / "vectors"


def vectors_dir(name: str) -> Path:
    """The folder of a published test-vector set, or skip the test with a reason."""
    path = VECTORS / name
    if not path.is_dir():
        pytest.skip(f"test vectors {name!r} not present at {path} (see shared/vectors/SOURCES.md)")
    return path


@pytest.fixture(autouse=True)
def _no_outbound_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test runs with outbound sockets to non-loopback addresses blocked."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else None
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in (
            "127.0.0.1", "::1", "localhost",
        ):
            raise RuntimeError(f"test tried to reach the network: {address!r}")
        return real_connect(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", guarded)
    yield


@pytest.fixture
def postgres_url() -> str:
    url = os.environ.get("TESSERA_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("no PostgreSQL configured: set TESSERA_TEST_POSTGRES_URL (CI does)")
    return url


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("TESSERA_TEST_REDIS_URL")
    if not url:
        pytest.skip("no Redis configured: set TESSERA_TEST_REDIS_URL (CI does)")
    return url
