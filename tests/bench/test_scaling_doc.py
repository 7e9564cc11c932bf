"""docs/scaling.md: its commands run as written and print what it shows.

The sizing figures come from ``bench/load-reference.json`` through
``python -m bench.load --capacity``: when the reference run is replaced, the
document's output block must be replaced with it, or this test fails.
"""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_docs import command_blocks

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "scaling.md"


def _run(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-e", "-c", command],  # noqa: S603, S607 - the doc's command
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
                          check=False)


def test_scaling_guide_is_linked() -> None:
    assert "docs/scaling.md" in (ROOT / "README.md").read_text()
    assert "scaling.md" in (ROOT / "bench" / "README.md").read_text()


def test_capacity_block_is_the_reference_run(tmp_path: Path) -> None:
    blocks = [(c, shown) for c, shown in command_blocks(DOC.read_text())
              if "load-reference.json" in c]
    assert len(blocks) == 1 and blocks[0][1], "the reference sizing and its output"
    (tmp_path / "bench").symlink_to(ROOT / "bench")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = _run(blocks[0][0], tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == blocks[0][1].strip()


def test_measuring_commands_run_as_written(tmp_path: Path, redis_url: str) -> None:
    blocks = [(c, shown) for c, shown in command_blocks(DOC.read_text())
              if "load-reference.json" not in c]
    assert blocks
    (tmp_path / "bench").symlink_to(ROOT / "bench")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "TESSERA_BENCH_REDIS_URL": redis_url}
    checker = doctest.OutputChecker()
    for command, shown in blocks:
        done = _run(command, tmp_path, env)
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
        if shown is not None:
            assert checker.check_output(shown.strip() + "\n", done.stdout.strip() + "\n",
                                        doctest.ELLIPSIS), (command, shown, done.stdout)
    assert "ops/s" in (tmp_path / "table.txt").read_text()


@pytest.mark.parametrize("drop", ["Redis, 2 instances", "1,000 checkouts/s"])
def test_the_output_check_can_fail(drop: str) -> None:
    [(_, shown)] = [(c, s) for c, s in command_blocks(DOC.read_text())
                    if "checkout.json" in c and s]
    assert shown is not None
    printed = shown.replace(drop, "something else").replace("...", "x")
    assert not doctest.OutputChecker().check_output(shown, printed, doctest.ELLIPSIS)
