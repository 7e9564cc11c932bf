"""Running documented shell commands as written (README.md, docs/*.md).

A block runs under ``bash -e`` in a fresh network namespace when the machine
allows one (so the documented ports 8000 and 8090 are ours even on a busy
machine), from a scratch directory where ``.venv`` and ``deploy`` point at this
checkout's, exactly the paths the documents name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def sh_block(markdown: str, heading: str) -> str:
    """The first ```sh block after ``heading``."""
    section = markdown[markdown.index(heading):]
    start = section.index("```sh\n") + len("```sh\n")
    return section[start:section.index("```", start)]


def _isolated_net() -> list[str] | None:
    """A prefix that runs a command in its own network namespace, if this machine allows."""
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if unshare is None or ip is None:
        return None
    probe = subprocess.run([unshare, "-rn", "true"],  # noqa: S603 - fixed arguments
                           capture_output=True, check=False)
    if probe.returncode != 0:
        return None
    return [unshare, "-rn", "sh", "-c", f'{ip} link set lo up && exec "$@"', "netns"]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def run_shell(script: str, cwd: Path, *, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """bash -e in ``cwd`` with a clean Tessera environment; every process it leaves
    running (the servers it backgrounds) is stopped afterwards."""
    missing = [tool for tool in ("bash", "curl", "jq") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the documented commands need {', '.join(missing)}")
    prefix = _isolated_net()
    if prefix is None and not all(_port_free(p) for p in (8000, 8090)):
        pytest.skip("no network namespace available and ports 8000/8090 are taken")
    # The README says .venv/bin/tessera: the environment running these tests.
    (cwd / ".venv").symlink_to(Path(sys.prefix))
    (cwd / "deploy").symlink_to(ROOT / "deploy")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env.update(HOME=str(cwd), COLUMNS="120", NO_COLOR="1")
    (cwd / "script.sh").write_text(script)
    # Files, not pipes: the backgrounded servers keep their stdout open after bash exits.
    with (cwd / "stdout.txt").open("w") as out, (cwd / "stderr.txt").open("w") as err:
        proc = subprocess.Popen([*(prefix or []), "bash", "-e", "script.sh"],  # noqa: S603
                                cwd=cwd,
                                env=env, stdout=out, stderr=err, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        finally:
            # The servers the script backgrounded are in the session we created for it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    out_text = (cwd / "stdout.txt").read_text()
    err_text = (cwd / "stderr.txt").read_text()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out_text, err_text)
