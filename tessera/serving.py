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
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Final

from uvicorn.protocols.http.auto import AutoHTTPProtocol

__all__ = ["HTTP_PROTOCOL", "NoDelayHTTPProtocol", "set_nodelay"]


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Nagle off on ``transport``'s socket when it is TCP (not a Unix socket)."""
    sock: Any = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class NoDelayHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """Uvicorn's HTTP protocol; ``TCP_NODELAY`` set as each connection is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        set_nodelay(transport)
        super().connection_made(transport)


HTTP_PROTOCOL: Final = f"{__name__}:NoDelayHTTPProtocol"
"""The ``http=`` value for ``uvicorn.run``: an import string, so spawned workers load it."""
