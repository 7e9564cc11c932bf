"""tessera.serving: connections to a multi-worker uvicorn get TCP_NODELAY.

The listening socket is made the way uvicorn makes it for ``--workers N``
(``socket.socket(AF_INET)``, proto 0); with uvicorn's own protocol the
accepted connection keeps Nagle on (the bug), with ours it is off.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

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
