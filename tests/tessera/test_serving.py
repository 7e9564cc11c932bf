"""tessera.serving: connections to a multi-worker uvicorn get TCP_NODELAY.

The listening socket is made the way uvicorn makes it for ``--workers N``
(``socket.socket(AF_INET)``, proto 0); with uvicorn's own protocol the
accepted connection keeps Nagle on (the bug), with ours it is off.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn

from tessera.serving import HTTP_PROTOCOL, NoDelayHTTPProtocol


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _nodelay_of_served_connection(http: str) -> int:
    async def scenario() -> int:
        listener = socket.socket(socket.AF_INET)  # as uvicorn.Config.bind_socket does
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(_app, http=http, log_level="warning",
                                               lifespan="off"))
        serving = asyncio.create_task(server.serve(sockets=[listener]))
        while not server.started:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        [connection] = list(server.server_state.connections)
        sock = connection.transport.get_extra_info("socket")
        value = int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()
        server.should_exit = True
        await serving
        return value

    return asyncio.run(scenario())


def test_uvicorn_alone_leaves_nagle_on_for_a_worker_socket() -> None:
    # The premise of the fix: if uvicorn or asyncio change this, the module can go.
    assert socket.socket(socket.AF_INET).proto == 0
    assert _nodelay_of_served_connection("h11") == 0


def test_our_protocol_turns_nagle_off() -> None:
    assert _nodelay_of_served_connection(HTTP_PROTOCOL) == 1


def test_the_import_string_loads_our_class_in_a_worker() -> None:
    config = uvicorn.Config(_app, http=HTTP_PROTOCOL)
    config.load()
    assert config.http_protocol_class is NoDelayHTTPProtocol


def test_unix_sockets_are_left_alone() -> None:
    from tessera.serving import set_nodelay

    left, right = socket.socketpair(socket.AF_UNIX)

    class Transport(asyncio.BaseTransport):
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return left if name == "socket" else default

    set_nodelay(Transport())  # no TCP option on a Unix socket: nothing raised
    left.close()
    right.close()


async def _sized_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _writes_of_one_response(protocol_class: Any, request: bytes) -> list[str | bytes]:
    """What the protocol hands its transport for one request: writes, then "close"."""
    from uvicorn.server import ServerState

    events: list[str | bytes] = []

    class Transport(asyncio.Transport):
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return {"peername": ("127.0.0.1", 5000),
                    "sockname": ("127.0.0.1", 8000)}.get(name, default)

        def write(self, data: Any) -> None:
            events.append(bytes(data))

        def is_closing(self) -> bool:
            return "close" in events

        def close(self) -> None:
            events.append("close")

        def pause_reading(self) -> None:
            pass

        def resume_reading(self) -> None:
            pass

    async def scenario() -> None:
        config = uvicorn.Config(_sized_app, log_level="warning", lifespan="off")
        config.load()
        protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
        protocol.connection_made(Transport())
        protocol.data_received(request)
        for _ in range(20):  # the app's task, then the end of its loop turn
            await asyncio.sleep(0)

    asyncio.run(scenario())
    return events


def test_a_response_leaves_in_one_write() -> None:
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    # The premise: uvicorn writes the head and the body separately.
    head, body = _writes_of_one_response(AutoHTTPProtocol, request)
    assert isinstance(head, bytes) and head.startswith(b"HTTP/1.1 200") and body == b"ok"
    assert _writes_of_one_response(NoDelayHTTPProtocol, request) == [head + body]


def test_what_is_buffered_is_sent_before_the_connection_closes() -> None:
    request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    written, closed = _writes_of_one_response(NoDelayHTTPProtocol, request)
    assert isinstance(written, bytes) and written.startswith(b"HTTP/1.1 200")
    assert written.endswith(b"\r\n\r\nok") and closed == "close"


def test_served_app_freezes_the_startup_heap_while_it_runs() -> None:
    """freeze_heap_after_startup: after the app's own start-up, what is alive is out of the
    collector's walks (gc.freeze) until shutdown, which gives it back (gc.unfreeze)."""
    import gc

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from tessera.serving import freeze_heap_after_startup

    started: list[object] = []
    seen: dict[str, int] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        started.append(object())
        seen["during_startup"] = gc.get_freeze_count()
        yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/frozen")
    def frozen() -> dict[str, int]:
        return {"count": gc.get_freeze_count()}

    assert freeze_heap_after_startup(app) is app
    before = gc.get_freeze_count()
    with TestClient(app) as client:
        count = client.get("/frozen").json()["count"]
    assert seen["during_startup"] == before  # the app's own start-up ran first
    assert count > before  # then the heap it left was frozen
    assert gc.get_freeze_count() == before  # and given back at shutdown
    assert started


def test_the_issuer_worker_factory_freezes_after_startup(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The factory each uvicorn worker calls serves an app whose start-up heap is frozen
    (apps built in tests, by create_app, are not)."""
    import gc

    from fastapi.testclient import TestClient

    from issuer import _cli as issuer_cli
    from issuer._settings import generate_master_key
    from issuer.migrations import upgrade

    url = f"sqlite:///{tmp_path}/worker.db"
    upgrade(url)
    monkeypatch.setenv("TESSERA_DATABASE_URL", url)
    monkeypatch.setenv("TESSERA_MASTER_KEY", generate_master_key())
    monkeypatch.setenv("TESSERA_PUBLIC_URL", "https://issuer.example")
    before = gc.get_freeze_count()
    with TestClient(issuer_cli.app_from_env()) as client:
        assert client.get("/healthz").status_code == 200
        assert gc.get_freeze_count() > before
    assert gc.get_freeze_count() == before
