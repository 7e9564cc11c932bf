"""Till keys: who may create checkout requests and read their results.

The verifier service is public (wallets fetch ``/r/{id}`` (the request object) and
post ``/response``), but only a till may ask a member for something in the
partner's name and read what the member disclosed. Each till holds its own
bearer key, ``tvk_<id>_<secret>``; the service keeps only the SHA-256 of the
secret (:func:`tessera.keys.secret_token_row`, constant-time), with a label
and the dates it was created and revoked.

The keys live in one small JSON file (``tessera verifier till create --tills
FILE``), like the trust list: every worker reads it, and re-reads it when it
changes, so a revocation takes effect on the next request without a restart.
Writers take an exclusive lock beside the file and replace it atomically, so
two operators never lose each other's key. Without a file (tests, the demo,
a one-run ``serve``) the keys live in memory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from tessera.encoding import parse_json_object
from tessera.errors import ErrorCode, TesseraError
from tessera.files import write_private
from tessera.keys import new_secret_token, secret_token_row

__all__ = ["TILL_TOKEN_PREFIX", "TillKeys"]

TILL_TOKEN_PREFIX: Final = "tvk_"  # noqa: S105 - a prefix, not a secret
_MAX_FILE_BYTES: Final = 4 * 1024 * 1024


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row.get(k) for k in ("id", "label", "created_at", "revoked_at")}


class TillKeys:
    """The tills of one verifier service: create, list, revoke, authenticate."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._rows: dict[str, dict[str, Any]] = {}
        self._stamp: tuple[int, int, int] | None = None

    # -- reading --------------------------------------------------------------------------
    def _read_file(self) -> dict[str, dict[str, Any]]:
        assert self.path is not None
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise TesseraError(ErrorCode.INVALID_REQUEST,
                               f"cannot read the till keys {self.path}: {exc.strerror}") from exc
        document = parse_json_object(raw, max_bytes=_MAX_FILE_BYTES)
        tills = document.get("tills")
        if not isinstance(tills, list) or not all(
            isinstance(t, dict) and isinstance(t.get("id"), str)
            and isinstance(t.get("secret_sha256"), str) for t in tills
        ):
            raise TesseraError(ErrorCode.MALFORMED, f"{self.path} is not a till key file")
        return {t["id"]: t for t in tills}

    def _current(self) -> dict[str, dict[str, Any]]:
        if self.path is None:
            return self._rows
        try:
            st = self.path.stat()
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            # One stat per request; the file is parsed again only when it changed
            # (a revocation by `tessera verifier till revoke` in another process).
            if stamp != self._stamp or stamp is None:
                self._rows = self._read_file() if stamp is not None else {}
                self._stamp = stamp
            return self._rows

    def list(self) -> list[dict[str, Any]]:
        """Ids, labels and dates; never a secret or its hash."""
        return [_public(r) for r in self._current().values()]  # in order of creation

    def authenticate(self, token: str) -> str:
        """The id of the live till this key belongs to, or ``unauthorized``."""
        rows = self._current()

        def lookup(key_id: str) -> dict[str, Any] | None:
            row = rows.get(key_id)
            return row if row is not None and row.get("revoked_at") is None else None

        row = secret_token_row(
            token, prefix=TILL_TOKEN_PREFIX, lookup=lookup,
            stored_hash=lambda r: str(r["secret_sha256"]),
            refused=TesseraError(ErrorCode.UNAUTHORIZED, "missing or invalid till key"))
        return str(row["id"])

    # -- writing --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _editing(self) -> Iterator[dict[str, dict[str, Any]]]:
        if self.path is None:
            with self._lock:
                yield self._rows
            return
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            rows = self._read_file()
            yield rows
            data = json.dumps({"tills": list(rows.values())}, indent=2).encode() + b"\n"
            write_private(self.path, data)
        finally:
            os.close(fd)

    def create(self, label: str = "") -> dict[str, Any]:
        """A new till key; the token is in the answer once and never stored."""
        key_id, token, secret_sha256 = new_secret_token(TILL_TOKEN_PREFIX)
        row = {"id": key_id, "label": label[:200], "secret_sha256": secret_sha256,
               "created_at": _now(), "revoked_at": None}
        with self._editing() as rows:
            rows[key_id] = row
        return {**_public(row), "token": token}

    def revoke(self, key_id: str) -> dict[str, Any]:
        """Refuse this till's key from its next request on; revoking twice is a no-op."""
        with self._editing() as rows:
            row = rows.get(key_id)
            if row is None:
                raise TesseraError(ErrorCode.NOT_FOUND, f"no till key {key_id!r}")
            if row.get("revoked_at") is None:
                row["revoked_at"] = _now()
        return _public(row)
