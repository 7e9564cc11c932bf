"""Bench only: the transparency log's per-write work off, in every server process.

``python -m bench.load --path earn`` puts this directory first on ``PYTHONPATH``
of its "log off" servers (:func:`bench.load._issuer_servers`), so Python's
``site`` imports this module at start-up in the server process and in every
uvicorn worker it spawns (a spawned worker is a fresh interpreter: a patch made
in the parent would not reach it). Production code has no switch for this.

What "off" skips: ``issuer._translog.append_for_member`` returns no leaf, so a
ledger write records no ``log_pending`` row, signs no inclusion promise
(``issuer._translog.promise`` returns None for no leaves) and leaves the
sequencer nothing to integrate; the ledger write itself (entry, lot, balance,
tier, idempotency record) is unchanged. The patch is applied when
``issuer._translog`` is first imported, from whichever copy of the code the
server runs (``TESSERA_BENCH_SERVER_CODE`` included), through an import hook:
at ``site`` time the server's own code directory is not on ``sys.path`` yet.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

TARGET = "issuer._translog"


def _no_leaf(*_args: Any, **_kwargs: Any) -> list[bytes]:
    return []


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != TARGET:
            return None
        sys.meta_path.remove(self)  # once; and find the real module without us
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            module.append_for_member = _no_leaf  # type: ignore[attr-defined]
            print(
                f"[bench log off] {TARGET}.append_for_member patched in this process",
                file=sys.stderr,
                flush=True,
            )

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


sys.meta_path.insert(0, _PatchOnImport())
