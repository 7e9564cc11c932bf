"""tessera.serving: connections to a multi-worker uvicorn get TCP_NODELAY.

The listening socket is made the way uvicorn makes it for ``--workers N``
(``socket.socket(AF_INET)``, proto 0); with uvicorn's own protocol the
accepted connection keeps Nagle on (the bug), with ours it is off.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

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

# -- connections dealt out over the processes sharing a listening socket ----------------------


def _listener() -> socket.socket:
    listener = socket.socket(socket.AF_INET)  # as uvicorn.Config.bind_socket does
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    return listener


class _Answer(asyncio.Protocol):
    """Answers each chunk received with its server's name (which worker holds us)."""

    def __init__(self, name: bytes) -> None:
        self.name = name

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(self.name)


class _Worker:
    """One event loop of ours in a thread, serving the shared listener: a stand-in for a
    uvicorn worker process (the accept race is the same between threads' epolls)."""

    def __init__(self, name: str, listener: socket.socket) -> None:
        from tessera.serving import balanced_loop

        self.loop = balanced_loop()
        self.ready = threading.Event()
        self.server: Any = None

        async def start() -> None:
            self.server = await self.loop.create_server(
                lambda: _Answer(name.encode()), sock=listener, backlog=64)
            self.ready.set()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.create_task(start())
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert self.ready.wait(30)

    def call(self, fn: Any) -> Any:
        """Run ``fn()`` on the worker's loop and return its result."""
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:
                done.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return done.result(30)

    def stop(self) -> None:
        self.call(self.server.close)
        asyncio.run_coroutine_threadsafe(self.server.wait_closed(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


def _wait_until(predicate: Any) -> None:
    """Polls (no deadline asserted: a loaded machine may take its time; pytest's own
    timeout, or the 600 s below, ends a hang)."""
    for _ in range(60000):
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("never happened")


def test_two_workers_on_one_socket_share_a_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    from tessera.serving import ACCEPT_DELAY_ENV, BalancedServer

    # A wait per held connection far above a loaded machine's scheduling delays.
    monkeypatch.setenv(ACCEPT_DELAY_ENV, "50")
    listener = _listener()
    workers = [_Worker("a", listener), _Worker("b", listener)]
    clients: list[socket.socket] = []
    try:
        assert all(isinstance(w.server, BalancedServer) for w in workers)
        port = listener.getsockname()[1]
        # A burst: all eight queued before either worker can take one (libuv's own
        # server takes every queued connection in the first worker to wake).
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
        for client in clients:
            client.sendall(b"?")
        names = [client.recv(1) for client in clients]
        held = {w: names.count(w) for w in (b"a", b"b")}
        assert sum(held.values()) == 8 and max(held.values()) <= 5, held
        assert [w.call(lambda w=w: w.server.open_connections) for w in workers] == \
            [held[b"a"], held[b"b"]]
        for client in clients:
            client.close()
        # Each worker counts its connections down as they close.
        for w in workers:
            _wait_until(lambda w=w: w.call(lambda: w.server.open_connections) == 0)
    finally:
        for client in clients:
            client.close()
        for w in workers:
            w.stop()
        listener.close()


def test_a_closed_server_leaves_connections_queued() -> None:
    listener = _listener()
    worker = _Worker("a", listener)
    worker.stop()  # what uvicorn's shutdown does first, before closing the socket
    port = listener.getsockname()[1]
    with socket.create_connection(("127.0.0.1", port)) as client:
        listener.settimeout(30)
        conn, _ = listener.accept()  # still queued: no closed worker took it
        conn.close()
        client.close()
    listener.close()


def test_the_loops_own_servers_where_there_is_nothing_to_share(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tessera.serving import ACCEPT_DELAY_ENV, BalancedServer, balanced_loop

    async def servers() -> list[Any]:
        loop = asyncio.get_running_loop()
        one = await loop.create_server(asyncio.Protocol, host="127.0.0.1", port=0)
        monkeypatch.setenv(ACCEPT_DELAY_ENV, "0")
        listener = _listener()
        off = await loop.create_server(asyncio.Protocol, sock=listener)
        made = [one, off]
        for server in made:
            server.close()
            await server.wait_closed()
        return made

    with asyncio.Runner(loop_factory=balanced_loop) as runner:
        made = runner.run(servers())
    assert not any(isinstance(server, BalancedServer) for server in made)


@pytest.mark.parametrize("value", ["-1", "1001", "fast"])
def test_an_accept_delay_out_of_range_is_refused(value: str) -> None:
    from tessera.errors import TesseraError
    from tessera.serving import ACCEPT_DELAY_ENV, accept_delay_from_env

    with pytest.raises(TesseraError) as err:
        accept_delay_from_env({ACCEPT_DELAY_ENV: value})
    assert ACCEPT_DELAY_ENV in err.value.detail
    assert accept_delay_from_env({ACCEPT_DELAY_ENV: "2"}) == 0.002
    assert accept_delay_from_env({}) > 0


def test_uvicorn_on_our_loop_serves_and_shuts_down_gracefully() -> None:
    """A uvicorn worker's life on :func:`balanced_loop`: a shared socket served by a
    :class:`BalancedServer`, ``TCP_NODELAY`` and one write per response as before, and
    a shutdown (SIGTERM: ``should_exit``) mid-request that still finishes the request."""
    from tessera.serving import BalancedServer, balanced_loop

    release = asyncio.Event()
    entered = asyncio.Event()

    async def slow_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        entered.set()
        await release.wait()
        await _sized_app(scope, receive, send)

    async def scenario() -> tuple[int, bytes, bool]:
        listener = _listener()
        port = listener.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(slow_app, http=HTTP_PROTOCOL,
                                               log_level="warning", lifespan="off"))
        serving = asyncio.create_task(server.serve(sockets=[listener]))
        while not server.started:
            await asyncio.sleep(0.01)
        assert [type(s) for s in server.servers] == [BalancedServer]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await entered.wait()
        [connection] = list(server.server_state.connections)
        nodelay = int(connection.transport.get_extra_info("socket").getsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY))
        server.should_exit = True  # what uvicorn's SIGTERM handler does
        await asyncio.sleep(0.3)  # uvicorn's shutdown is now waiting on the request
        assert not serving.done()
        release.set()
        answer = await reader.read()  # the response, then the close (shutdown asked it)
        await serving
        writer.close()
        return nodelay, answer, listener.fileno() == -1

    with asyncio.Runner(loop_factory=balanced_loop) as runner:
        nodelay, answer, closed = runner.run(scenario())
    assert nodelay == 1
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\nok")
    assert closed  # uvicorn closed the listening socket after our server let go of it
