"""tessera.files.write_private: whole, private, and first-writer-wins when asked."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tessera.files import write_private


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_whole_file_readable_by_owner_only(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "key.json"
    write_private(target, b"secret")
    assert target.read_bytes() == b"secret"
    assert _mode(target) == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["key.json"]


def test_replace_overwrites_and_keeps_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "tills.json"
    write_private(target, b"one")
    write_private(target, b"two")
    assert target.read_bytes() == b"two"
    assert _mode(target) == 0o600


def test_without_replace_the_first_writer_wins(tmp_path: Path) -> None:
    target = tmp_path / "master.key"
    write_private(target, b"first", replace=False)
    with pytest.raises(FileExistsError):
        write_private(target, b"second", replace=False)
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["master.key"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "wallet.json"
    write_private(target, b"old")

    def boom(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        write_private(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["wallet.json"]
