"""An independent C2SP implementation for interop tests: aics-tlog and aics-witness (PyPI).

They need Python >= 3.12 and cryptography >= 50, Tessera runs on 3.11, so they
live in a venv of their own under ``.cache/aics-venv`` (git-ignored;
``TESSERA_AICS_VENV`` moves it), made once with any Python 3.12+ found
(``TESSERA_AICS_PYTHON``, ``python3.12``/``python3.13`` on PATH, or pyenv's
versions) and reused. Tests talk to them through ``tests/tessera/aics_driver.py``
over subprocess, JSON in and out; nothing of theirs is imported here.
When no such Python or no package index is at hand, the tests skip and say why.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DRIVER = REPO / "tests" / "tessera" / "aics_driver.py"
PACKAGES = ("aics-tlog==0.2.1", "aics-witness==0.1.0")


def _python312() -> str | None:
    candidates = [os.environ.get("TESSERA_AICS_PYTHON", "")]
    candidates += [shutil.which(n) or "" for n in ("python3.12", "python3.13", "python3.14")]
    home = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates += sorted(glob.glob(f"{home}/versions/3.1[2-9]*/bin/python3"))
    for candidate in candidates:
        if not candidate:
            continue
        try:
            out = subprocess.run(  # noqa: S603 - a local interpreter we looked for
                [candidate, "-c", "import sys; print(sys.version_info >= (3, 12))"],
                capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.stdout.strip() == "True":
            return candidate
    return None


@dataclass(frozen=True)
class Aics:
    python: Path

    def run(self, command: dict[str, Any], *, timeout: float = 60) -> dict[str, Any]:
        out = subprocess.run(  # noqa: S603 - our venv, our driver
            [str(self.python), str(DRIVER)], input=json.dumps(command) + "\n",
            capture_output=True, text=True, timeout=timeout, check=False)
        if out.returncode != 0:
            raise AssertionError(f"aics driver failed: {out.stderr[-2000:]}")
        answer: dict[str, Any] = json.loads(out.stdout)
        return answer

    def start_witness(self, name: str, logs: dict[str, str]) -> tuple[subprocess.Popen[str],
                                                                      str, str]:
        """aics-witness serving on loopback: (process, URL, its vkey). Close stdin to stop."""
        proc = subprocess.Popen([str(self.python), str(DRIVER)],  # noqa: S603 - as above
                                stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps({"op": "witness", "name": name, "logs": logs}) + "\n")
        proc.stdin.flush()
        hello = json.loads(proc.stdout.readline())
        return proc, str(hello["url"]), str(hello["vkey"])


def prepare() -> Aics | str:
    """The venv ready to use, or the reason it cannot be."""
    venv = Path(os.environ.get("TESSERA_AICS_VENV", REPO / ".cache" / "aics-venv"))
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import aics_tlog, aics_witness"]
    if python.exists() and subprocess.run(  # noqa: S603 - our venv's interpreter
            check, capture_output=True, check=False).returncode == 0:
        return Aics(python)
    base = _python312()
    if base is None:
        return "aics-tlog needs Python >= 3.12 and none was found (set TESSERA_AICS_PYTHON)"
    made = subprocess.run(  # noqa: S603 - the interpreter found above
        [base, "-m", "venv", "--clear", str(venv)], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"cannot make the aics venv: {made.stderr[-500:]}"
    pip = subprocess.run(  # noqa: S603 - pinned packages into our venv
        [str(python), "-m", "pip", "install", "-q", *PACKAGES],
        capture_output=True, text=True, timeout=600, check=False)
    if pip.returncode != 0:
        return f"cannot install {', '.join(PACKAGES)}: {pip.stderr[-500:]}"
    return Aics(python)


if __name__ == "__main__":  # .ci/run: make the venv before the suite
    result = prepare()
    print(result if isinstance(result, str) else f"aics venv ready: {result.python}")
    sys.exit(0)
