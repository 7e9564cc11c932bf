"""Shared fixtures: vector locations, optional servers, and no network.

PostgreSQL and Redis: ``TESSERA_TEST_POSTGRES_URL`` / ``TESSERA_TEST_REDIS_URL``
name them. When one is unset and a server answers at the documented default
local address (the ones ``.ci/run`` uses), the suite uses it and says so in
the pytest header, so a newcomer with both installed runs every test. Set the
variable to the empty string to skip those tests anyway.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path

import pytest

DEFAULT_SERVERS: dict[str, str] = {
    "TESSERA_TEST_POSTGRES_URL": "postgresql://postgres@127.0.0.1:5432/test",
    "TESSERA_TEST_REDIS_URL": "redis://127.0.0.1:6379/0",
}
_server_notes: list[str] = []


def _postgres_answers(url: str) -> bool:
    try:
        import psycopg
    except ImportError:
        return False
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def _redis_answers(url: str) -> bool:
    try:
        import redis
    except ImportError:
        return False
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


def use_default_server(environ: MutableMapping[str, str], name: str, default: str,
                       answers: Callable[[str], bool]) -> str:
    """Set ``name`` to ``default`` when it is unset and a server answers there; say what
    was decided (one line of the pytest header)."""
    what = "PostgreSQL" if "POSTGRES" in name else "Redis"
    if name in environ:
        if not environ[name]:
            return f"{what}: off ({name} is empty): those tests skip"
        return f"{what}: {environ[name]} (from {name})"
    if answers(default):
        environ[name] = default
        return (f"{what}: {default} (found at the default local address; "
                f"{name}= turns it off)")
    return f"{what}: none at {default} and {name} unset: those tests skip"


def pytest_configure(config: pytest.Config) -> None:
    # Before collection: module-level skipif marks read these variables.
    probes = {"TESSERA_TEST_POSTGRES_URL": _postgres_answers,
              "TESSERA_TEST_REDIS_URL": _redis_answers}
    _server_notes[:] = [use_default_server(os.environ, name, default, probes[name])
                        for name, default in DEFAULT_SERVERS.items()]


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"tessera: {note}" for note in _server_notes]


def pytest_sessionstart(session: pytest.Session) -> None:
    # addopts has -q, which hides the header: which servers the run uses is
    # worth its two lines anyway (a skipped PostgreSQL run looks like a pass).
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and session.config.get_verbosity() < 0:
        for line in pytest_report_header(session.config):
            reporter.write_line(line)

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


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A serve command run in-process configures the root logger (JSON lines on the
    stderr of that moment); later tests must not inherit it, or a CLI test's captured
    stderr gets another test's log lines."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


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


@pytest.fixture(scope="session")
def aics() -> object:
    """aics-tlog/aics-witness, an independent C2SP implementation, in a venv of its own."""
    from tests.aics import prepare

    ready = prepare()
    if isinstance(ready, str):
        pytest.skip(ready)
    return ready
