"""``tessera ... serve`` with granian in place of uvicorn (``bench.load --server granian``).

``python -m bench._granian issuer serve --port P ...`` runs the same CLI command as the
uvicorn configurations (the same parent-side checks, key file, environment for the
workers), with ``uvicorn.run`` replaced by a granian server taking the same arguments:
the A/B changes the HTTP server and nothing else. Granian (Rust, hyper + tokio) parses
HTTP and manages connections outside Python and calls the ASGI app on a uvloop event
loop in each worker process; ``workers`` are processes on one shared socket, and the
app's lifespan runs in each (the issuer's transparency-log sequencer starts there).

Differences kept in mind when reading the figures: uvicorn with one worker serves in
the CLI's own process, granian always in a worker process under a supervisor (both
counted: bench.load sums the CPU of the whole process tree); granian applies no
``proxy_headers`` (``X-Forwarded-*``), which the loopback benchmark does not send.
"""

from __future__ import annotations

import os
import sys
from typing import Any

# A one-worker verifier hands uvicorn an app object built in the CLI process; a granian
# worker is a process of its own and imports its app, so it builds it from the
# environment the CLI has set, as uvicorn's own workers do (same key and till files).
_FACTORIES = {"verifier": "verifier._service:app_from_env",
              "issuer": "issuer._cli:app_from_env"}


def _granian_run(app: Any, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
                 factory: bool = False, **_uvicorn_only: Any) -> None:
    from granian.constants import HTTPModes, Interfaces, Loops, TaskImpl
    from granian.log import LogLevels
    from granian.server import Server

    if not isinstance(app, str):
        app, factory = _FACTORIES[_role], True
    # GRANIAN_TASK_IMPL=rust: granian's own task implementation (Python < 3.12 only),
    # documented as faster; asyncio's by default, because with rust every thread-pool
    # route fails (anyio cannot find its root task: bench/README.md, "Servers and drivers").
    task_impl = TaskImpl(os.environ.get("GRANIAN_TASK_IMPL", "asyncio"))
    Server(app, address=host, port=port, interface=Interfaces.ASGI, workers=workers,
           loop=Loops.uvloop, http=HTTPModes.http1, factory=factory, task_impl=task_impl,
           log_level=LogLevels.warning, log_access=False).serve()


_role = ""


def main(argv: list[str]) -> None:
    global _role
    import uvicorn

    _role = argv[0] if argv else ""
    uvicorn.run = _granian_run  # the CLI imports uvicorn inside serve(): it sees this
    from tessera.cli import app

    app(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
