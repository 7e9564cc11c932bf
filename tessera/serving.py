"""How the services' uvicorn servers take connections: ``TCP_NODELAY`` on every one.

``tessera issuer serve`` and ``tessera verifier serve`` pass
``http=HTTP_PROTOCOL`` to uvicorn: its own HTTP protocol class (httptools when
installed, else h11), which switches Nagle's algorithm off on each accepted
TCP connection before serving it.

Why: asyncio turns ``TCP_NODELAY`` on for an accepted socket only when the
listening socket was created with ``proto=IPPROTO_TCP``
(``asyncio.base_events._set_nodelay``). With one worker uvicorn lets asyncio
create the listener (``getaddrinfo`` gives proto 6) and all is well; with
``--workers N`` uvicorn binds the listener itself, ``socket.socket(family)``,
proto 0, and every connection keeps Nagle on. A response goes out in two
writes (head, then body): Nagle holds the body until the client has
acknowledged the head, and the client delays that ACK by up to 40 ms. Four
round trips of a checkout then idle ~160 ms, and two workers served a third
of what one worker did with both workers idle (bench/README.md, "Why two
workers were slower than one").

The same class also sends each response in one write: uvicorn writes the
head and the body separately (two ``send`` system calls, and with Nagle off
two TCP segments, each a trip through the loopback or network stack charged
to this process). :class:`CoalescingTransport` gathers what is written
during one turn of the event loop and sends it at the end of that turn: an
application's ``http.response.start`` and ``http.response.body`` are sent
without the loop turning in between, so they leave as one segment; a
streamed body (event streams) still leaves chunk by chunk, one loop turn
later at most (bench/README.md, "Checkout, per-request cost (session 5)").

:func:`freeze_heap_after_startup` wraps a served app's lifespan: once the app
has started, everything alive (modules, routes, models, the engine) moves out
of the cyclic garbage collector's reach (``gc.freeze``). A worker holds some
180,000 such objects after start-up, and every full (generation 2) collection
walked them all: 105-190 ms of CPU with the GIL held in the issuance bench
(more wall time on a loaded machine), every request of that worker standing
still meanwhile (bench/README.md, "Session 9 (issuance tail latency)").
"""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVar, cast

from starlette.applications import Starlette
from uvicorn.protocols.http.auto import AutoHTTPProtocol

_App = TypeVar("_App", bound=Starlette)

__all__ = ["HTTP_PROTOCOL", "CoalescingTransport", "NoDelayHTTPProtocol",
           "freeze_heap_after_startup", "set_nodelay"]


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Nagle off on ``transport``'s socket when it is TCP (not a Unix socket)."""
    sock: Any = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class CoalescingTransport:
    """A transport whose writes in one event-loop turn leave in one ``write``.

    Everything else is the wrapped transport's; ``close`` sends what is
    buffered first (as a transport's own ``close`` does), ``abort`` drops it.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(bytes(data))

    def writelines(self, data: Any) -> None:
        for chunk in data:
            self.write(chunk)

    def _flush(self) -> None:
        if self._pending:
            data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
            self._pending = []
            if not self._transport.is_closing():
                self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class NoDelayHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """Uvicorn's HTTP protocol; ``TCP_NODELAY`` set as each connection is made, and
    each response's head and body written together (:class:`CoalescingTransport`)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        set_nodelay(transport)
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        super().connection_made(CoalescingTransport(cast(asyncio.Transport, transport)))


HTTP_PROTOCOL: Final = f"{__name__}:NoDelayHTTPProtocol"
"""The ``http=`` value for ``uvicorn.run``: an import string, so spawned workers load it."""


def freeze_heap_after_startup(app: _App) -> _App:
    """``app`` (a FastAPI/Starlette app), its lifespan followed by ``gc.freeze()``.

    For the app a server process serves (the ``app_from_env`` factories), not for
    apps built in tests: the objects of start-up live as long as the process, so
    the full collections need not walk them (see the module docstring). A
    collection first, so that start-up's garbage is freed rather than frozen.
    Objects made later (requests, caches) stay collectable as before, and the full
    collections that walk them are as frequent or more (their trigger counts the
    objects they walk) but each a fraction as long. Shutdown unfreezes, leaving
    the collector as it found it.
    """
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(served: Starlette) -> AsyncIterator[Any]:
        async with inner(served) as state:
            gc.collect()
            gc.freeze()
            try:
                yield state
            finally:
                gc.unfreeze()

    app.router.lifespan_context = lifespan
    return app
