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

With ``--workers N`` the serve commands also pass ``loop=LOOP_FACTORY``: an
event loop (uvloop's, asyncio's without it) whose server on a shared
listening socket takes connections one at a time, a worker that already
holds connections waiting a little first (:class:`BalancedServer`). uvicorn
hands every worker the same listening socket; libuv, woken by it, accepts
every pending connection at once, so a burst of keep-alive connections (a
load generator's clients, a proxy's upstream pool) landed mostly on one
worker, which then served them alone while the other idled (4/0 and 6/2
splits; bench/README.md "Session 8 run", "Session 9 (balanced accept)").
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import socket
import ssl as _ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVar, cast

from starlette.applications import Starlette
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from tessera.errors import ErrorCode, TesseraError

_App = TypeVar("_App", bound=Starlette)

__all__ = [
    "ACCEPT_DELAY_ENV",
    "HTTP_PROTOCOL",
    "LOOP_FACTORY",
    "BalancedServer",
    "CoalescingTransport",
    "NoDelayHTTPProtocol",
    "accept_delay_from_env",
    "balanced_loop",
    "freeze_heap_after_startup",
    "set_nodelay",
]


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


# -- spreading connections over worker processes ----------------------------------------------

ACCEPT_DELAY_ENV: Final = "TESSERA_ACCEPT_DELAY_MS"
"""Milliseconds a worker waits, per connection it holds (at most :data:`ACCEPT_DELAY_CAP`
counted), before it takes a new one; ``0`` turns balancing off (libuv's accept-all)."""

DEFAULT_ACCEPT_DELAY_MS: Final = 0.5
ACCEPT_DELAY_CAP: Final = 4
"""Held connections counted at most: a worker holding more than this waits
``ACCEPT_DELAY_CAP * delay`` (2 ms by default) before each accept, no longer. The cap
bounds what a new connection can wait, and what a client that opens a connection per
request can get: one accept per 2 ms from each busy worker (500/s each). Past the cap
two workers wait alike, and which takes the next connection is a race again (but one
connection per race, not a whole burst)."""

_ACCEPT_RETRY_DELAY: Final = 1.0  # asyncio's constants.ACCEPT_RETRY_DELAY (out of fds)
_logger = logging.getLogger("tessera.serving")


def accept_delay_from_env(environ: Any = None) -> float:
    """Seconds per held connection (:data:`ACCEPT_DELAY_ENV`); 0.0: balancing off.
    The serve commands call it before starting workers, so a bad value stops the start
    rather than every worker (which uvicorn's supervisor would restart, and again)."""
    raw = (os.environ if environ is None else environ).get(ACCEPT_DELAY_ENV, "").strip()
    if not raw:
        return DEFAULT_ACCEPT_DELAY_MS / 1000
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1000:
        raise TesseraError(ErrorCode.MALFORMED,
                           f"{ACCEPT_DELAY_ENV}={raw!r}: milliseconds from 0 to 1000")
    return value / 1000


class _CountedProtocol(asyncio.Protocol):
    """The server's protocol, passed through; tells the server when its connection ends."""

    def __init__(self, inner: asyncio.Protocol, server: BalancedServer) -> None:
        self._inner = inner
        self._server: BalancedServer | None = server

    def release(self) -> None:
        if self._server is not None:
            self._server.open_connections -= 1
            self._server = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.release()
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class BalancedServer(asyncio.AbstractServer):
    """A server on a listening socket shared with other processes, taking connections one
    at a time and later the more connections this process already holds.

    Each process sharing the socket is woken when a connection is pending. One holding
    ``k`` open connections waits ``delay * min(k, ACCEPT_DELAY_CAP)`` first, then accepts
    one, non-blocking: if a process holding fewer took it in the meantime, the accept
    finds nothing and this one goes back to waiting. So a burst of connections is dealt
    out, the emptier worker first, where libuv (and asyncio) would accept the whole burst
    in whichever worker woke first. Prior art: nginx's ``accept_mutex`` and its
    ``ngx_accept_disabled`` (a worker whose connections are 7/8 of its limit skips
    accepting for a while: src/event/ngx_event_accept.c) and Node's ``cluster`` module,
    whose primary accepts and deals connections round-robin (``SCHED_RR``, the default
    off Windows). There is no one process here to deal from (uvicorn's supervisor only
    watches), and no shared counter: each worker knows only its own count, so the wait
    is absolute, and it is short and capped.

    What uvicorn's ``Server.shutdown`` needs: :meth:`close` (stop accepting; the
    supervisor then closes the listening socket) and :meth:`wait_closed`.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol_factory: Callable[[], asyncio.BaseProtocol], *,
                 delay: float, ssl: _ssl.SSLContext | None = None,
                 ssl_handshake_timeout: float | None = None) -> None:
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._factory = protocol_factory
        self._delay = delay
        self._ssl = ssl
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._reading = False
        self._task: asyncio.Task[None] | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        self.open_connections = 0
        """Connections accepted and not yet lost (TLS handshakes under way included)."""

    def start(self) -> None:
        if self._task is None:
            self._task = self._loop.create_task(self._accept_loop())

    async def _accept_loop(self) -> None:
        while True:
            await self._readable()
            held = min(self.open_connections, ACCEPT_DELAY_CAP)
            if held:
                await asyncio.sleep(self._delay * held)
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                continue  # another worker took it
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # As asyncio does: out of descriptors, stop accepting for a while
                    # (the connection stays queued for another worker or for later).
                    _logger.error("accept() out of system resource: %s", exc)
                    await asyncio.sleep(_ACCEPT_RETRY_DELAY)
                continue  # ECONNABORTED and the like: that connection is gone
            self.open_connections += 1
            self._connect(conn)

    def _readable(self) -> asyncio.Future[None]:
        """Resolved when the listening socket has a connection pending. The reader is
        removed at once: the socket stays readable while this worker waits its turn,
        and would otherwise wake the loop on every turn."""
        ready: asyncio.Future[None] = self._loop.create_future()

        def wake() -> None:
            self._stop_reading()
            if not ready.done():
                ready.set_result(None)

        self._loop.add_reader(self._fd, wake)
        self._reading = True
        return ready

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def _connect(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        protocol = _CountedProtocol(cast(asyncio.Protocol, self._factory()), self)
        made = self._loop.connect_accepted_socket(
            lambda: protocol, conn, ssl=self._ssl,
            ssl_handshake_timeout=self._ssl_handshake_timeout if self._ssl else None)

        async def connect() -> None:
            try:
                await made
            except asyncio.CancelledError:
                protocol.release()
                conn.close()
                raise
            except Exception as exc:  # a failed TLS handshake: that client's problem
                protocol.release()
                conn.close()
                _logger.debug("connection not made: %r", exc)

        # Not awaited here: a TLS handshake must not hold up the next accept.
        task = self._loop.create_task(connect())
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    # -- asyncio.AbstractServer ------------------------------------------------------------

    def close(self) -> None:
        # Synchronously: uvicorn closes the listening socket right after this returns,
        # and its descriptor must not stay registered with the loop.
        self._stop_reading()
        if self._task is not None:
            self._task.cancel()
        for task in list(self._handshakes):
            task.cancel()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start_serving(self) -> None:
        self.start()

    async def serve_forever(self) -> None:
        self.start()
        assert self._task is not None
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def wait_closed(self) -> None:
        tasks = [t for t in (self._task, *self._handshakes) if t is not None]
        if tasks:
            await asyncio.wait(tasks)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._sock,)


async def _balanced_create_server(
    loop: asyncio.AbstractEventLoop, create: Callable[..., Any],
    protocol_factory: Callable[[], asyncio.BaseProtocol], host: Any, port: Any,
    kwargs: dict[str, Any],
) -> asyncio.AbstractServer:
    sock = kwargs.get("sock")
    delay = accept_delay_from_env()
    if (host is not None or port is not None or not isinstance(sock, socket.socket)
            or sock.type != socket.SOCK_STREAM or delay == 0
            or kwargs.get("start_serving", True) is False):
        # One worker (uvicorn lets the loop bind host and port), or balancing off.
        server: asyncio.AbstractServer = await create(protocol_factory, host, port, **kwargs)
        return server
    sock.setblocking(False)
    # uvicorn's supervisor binds the socket, each worker's create_server listens on it.
    sock.listen(kwargs.get("backlog") or 100)
    balanced = BalancedServer(loop, sock, protocol_factory, delay=delay,
                              ssl=kwargs.get("ssl"),
                              ssl_handshake_timeout=kwargs.get("ssl_handshake_timeout"))
    balanced.start()
    return balanced


class _BalancedAsyncioLoop(asyncio.SelectorEventLoop):
    async def create_server(  # type: ignore[override]
        self, protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: Any = None, port: Any = None, **kwargs: Any,
    ) -> asyncio.AbstractServer:
        return await _balanced_create_server(self, super().create_server, protocol_factory,
                                             host, port, kwargs)


try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
    _BalancedUVLoop: type[asyncio.AbstractEventLoop] | None = None
else:
    class _BalancedUVLoop(uvloop.Loop):  # type: ignore[no-redef]
        async def create_server(  # type: ignore[override]
            self, protocol_factory: Callable[[], asyncio.BaseProtocol],
            host: Any = None, port: Any = None, **kwargs: Any,
        ) -> asyncio.AbstractServer:
            return await _balanced_create_server(self, super().create_server,
                                                 protocol_factory, host, port, kwargs)


def balanced_loop() -> asyncio.AbstractEventLoop:
    """A new event loop (uvloop's when installed, as uvicorn's ``loop="auto"``) whose
    ``create_server(sock=...)`` serves a shared listening socket with a
    :class:`BalancedServer`; ``host``/``port`` servers are the loop's own."""
    return _BalancedUVLoop() if _BalancedUVLoop is not None else _BalancedAsyncioLoop()


LOOP_FACTORY: Final = f"{__name__}:balanced_loop"
"""The ``loop=`` value for ``uvicorn.run`` with workers: uvicorn (0.36 and later) imports
a non-builtin value and calls it for each worker's event loop."""
