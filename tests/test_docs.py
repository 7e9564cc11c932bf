"""The documented error codes are exactly the ones the code can produce."""

from __future__ import annotations

import re
from pathlib import Path

from tessera.errors import ErrorCode

DOC = Path(__file__).resolve().parent.parent / "docs" / "errors.md"


def test_every_error_code_is_documented_and_nothing_else() -> None:
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", DOC.read_text(), flags=re.M))
    assert documented == {c.value for c in ErrorCode}
