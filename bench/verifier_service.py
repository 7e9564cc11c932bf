"""``python -m bench verifier_service``: the checkout path of :mod:`bench.load`.

Kept under its old name (docs/verifier-service.md points here); the driver,
configurations and report are :mod:`bench.load`'s: ``python -m
bench.verifier_service [options]`` is ``python -m bench.load --path checkout
[options]``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, Final

from bench import load

__all__ = ["CONFIGS", "main", "print_table", "run"]

CONFIGS: Final = load.CONFIGS["checkout"]
print_table = load.print_table


def run(*, quick: bool = False) -> dict[str, Any]:
    return load.run(quick=quick, paths=("checkout",))


def main(argv: Sequence[str] | None = None) -> int:
    return load.main(["--path", "checkout", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
