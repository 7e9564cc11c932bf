"""Private files written whole or not at all (keys, wallets, till key lists).

One way to write a secret to disk: a 0600 temporary file beside the target,
flushed and fsynced, then renamed over the target (``replace=True``) or linked
to it only if it does not exist yet (``replace=False``: the first writer of a
generated key wins, the others use its key). A crash leaves the old file or
the new one, never half of either, and the secret is never readable by others,
not even for the instant between creation and a ``chmod``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["write_private"]


def write_private(path: Path, data: bytes, *, replace: bool = True) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600.

    With ``replace=False`` an existing ``path`` is left untouched and
    :class:`FileExistsError` is raised.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
