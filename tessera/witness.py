"""A C2SP tlog-witness: what a partner brand runs to keep the other brands' logs honest.

In a coalition the partners are natural, mutually distrustful witnesses: a
brand that showed one member one history and another member another (a split
view) would need every witness to cosign both branches, and a witness cosigns
a checkpoint only when it extends the last one it cosigned for that log.

* :class:`Witness` implements ``add-checkpoint`` (c2sp.org/tlog-witness):
  verify the log's signature (404 unknown origin, 403 no or bad trusted
  signature), check the old size against the stored one (409 with
  ``text/x.tlog.size``), the consistency proof (422), then persist and answer
  ``cosignature/v1`` lines (c2sp.org/tlog-cosignature).
* :class:`WitnessStore` keeps the latest cosigned checkpoint per origin in
  SQLite. The spec's race (§add-checkpoint: check-then-store must be atomic,
  or a slow smaller request rolls the state back) is closed with a
  compare-and-swap: the row changes only if it still holds the size and root
  the request was checked against. The state only ever grows, so a smaller
  or inconsistent tree is refused for good, across restarts. Refused but
  validly signed checkpoints are kept as evidence of log misbehaviour.
* :func:`create_app` is the HTTP service (``tessera witness serve``);
  :class:`WitnessClient` is the log's side, which the issuer uses.

Imports FastAPI: only the services import this module.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from tessera import merkle
from tessera.errors import ErrorCode, TesseraError
from tessera.health import health_router, unavailable
from tessera.tlog import (
    MAX_NOTE_BYTES,
    MAX_PROOF_LINES,
    AddCheckpoint,
    Checkpoint,
    Cosigner,
    Note,
    NoteSignature,
    Verifier,
    parse_signature_lines,
    verify_note,
)
from tessera.web import install_problem_handlers

__all__ = [
    "SIZE_MEDIA_TYPE",
    "Witness",
    "WitnessClient",
    "WitnessConflict",
    "WitnessStore",
    "create_app",
    "origin_hash",
]

SIZE_MEDIA_TYPE: Final = "text/x.tlog.size"
MAX_BODY: Final = MAX_NOTE_BYTES + 64 * (MAX_PROOF_LINES + 2)
MAX_EVIDENCE_PER_LOG: Final = 100


class WitnessConflict(TesseraError):
    """409: the old size is not the size this witness last cosigned (tlog-witness)."""

    def __init__(self, latest_size: int) -> None:
        super().__init__(ErrorCode.CONFLICT,
                         f"the latest checkpoint this witness cosigned has size {latest_size}")
        self.latest_size = latest_size

    def __reduce__(self) -> Any:
        return (type(self), (self.latest_size,))


def origin_hash(origin: str) -> str:
    """tlog-witness §Monitor Retrieval: lowercase hex SHA-256 of the origin."""
    return hashlib.sha256(origin.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Latest:
    size: int
    root_hash: bytes
    note: str


class WitnessStore:
    """The latest cosigned checkpoint of each log, in a SQLite file (or ``:memory:``)."""

    def __init__(self, path: str | Path) -> None:
        self._path = str(path)
        self._lock = threading.Lock()  # one writer per process; SQLite's lock across them
        self._shared = (sqlite3.connect(":memory:", check_same_thread=False,
                                        isolation_level=None)
                        if self._path == ":memory:" else None)
        db = self._connect()
        try:
            if self._shared is None:
                db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS witness_checkpoint ("
                       "origin TEXT PRIMARY KEY, size INTEGER NOT NULL, root BLOB NOT NULL, "
                       "note TEXT NOT NULL, updated_at INTEGER NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS witness_evidence ("
                       "id INTEGER PRIMARY KEY AUTOINCREMENT, origin TEXT NOT NULL, "
                       "received_at INTEGER NOT NULL, reason TEXT NOT NULL, "
                       "request BLOB NOT NULL)")
        finally:
            if db is not self._shared:
                db.close()

    def _connect(self) -> sqlite3.Connection:
        if self._shared is not None:
            return self._shared
        db = sqlite3.connect(self._path, timeout=30, isolation_level=None)
        db.execute("PRAGMA synchronous=FULL")  # a cosigned size must survive a power cut
        return db

    def latest(self, origin: str) -> Latest | None:
        db = self._connect()
        try:
            row = db.execute("SELECT size, root, note FROM witness_checkpoint WHERE origin = ?",
                             (origin,)).fetchone()
        finally:
            if db is not self._shared:
                db.close()
        return Latest(int(row[0]), bytes(row[1]), str(row[2])) if row else None

    def swap(self, origin: str, expected: Latest | None, size: int, root: bytes, note: str,
             now: int) -> bool:
        """Store the new checkpoint iff the row still is ``expected``; whether it was stored."""
        with self._lock:
            db = self._connect()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    if expected is None:
                        cursor = db.execute(
                            "INSERT INTO witness_checkpoint VALUES (?, ?, ?, ?, ?) "
                            "ON CONFLICT (origin) DO NOTHING", (origin, size, root, note, now))
                    else:
                        cursor = db.execute(
                            "UPDATE witness_checkpoint SET size = ?, root = ?, note = ?, "
                            "updated_at = ? WHERE origin = ? AND size = ? AND root = ? "
                            "AND size <= ?",
                            (size, root, note, now, origin, expected.size, expected.root_hash,
                             size))
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                return cursor.rowcount == 1
            finally:
                if db is not self._shared:
                    db.close()

    def record_evidence(self, origin: str, reason: str, request: bytes, now: int) -> None:
        with self._lock:
            db = self._connect()
            try:
                count = db.execute("SELECT count(*) FROM witness_evidence WHERE origin = ?",
                                   (origin,)).fetchone()[0]
                if count < MAX_EVIDENCE_PER_LOG:
                    db.execute("INSERT INTO witness_evidence (origin, received_at, reason, "
                               "request) VALUES (?, ?, ?, ?)", (origin, now, reason, request))
            finally:
                if db is not self._shared:
                    db.close()

    def check(self) -> str:
        """Readiness: the file opens and its tables answer (``/readyz``)."""
        db = self._connect()
        try:
            count = db.execute("SELECT count(*) FROM witness_checkpoint").fetchone()[0]
        except sqlite3.Error as exc:
            raise unavailable("the witness database", exc) from None
        finally:
            if db is not self._shared:
                db.close()
        return f"{count} log(s) cosigned"

    def evidence(self, origin: str) -> list[tuple[str, bytes]]:
        db = self._connect()
        try:
            return [(str(r), bytes(b)) for r, b in db.execute(
                "SELECT reason, request FROM witness_evidence WHERE origin = ? ORDER BY id",
                (origin,))]
        finally:
            if db is not self._shared:
                db.close()


class Witness:
    """The ``add-checkpoint`` logic, independent of HTTP."""

    def __init__(self, cosigner: Cosigner, logs: Iterable[Verifier], store: WitnessStore, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.cosigner = cosigner
        self.store = store
        self._clock = clock
        self.logs: dict[str, list[Verifier]] = {}
        for key in logs:
            # tlog-checkpoint: the log's key name SHOULD match its origin; here it must,
            # so one vkey per log is the whole configuration.
            self.logs.setdefault(key.name, []).append(key)

    def add_checkpoint(self, body: bytes) -> list[NoteSignature]:
        request = AddCheckpoint.parse(body)
        note = request.checkpoint
        checkpoint = Checkpoint.from_text(note.text)
        keys = self.logs.get(checkpoint.origin)
        if not keys:
            raise TesseraError(ErrorCode.NOT_FOUND, "this witness does not know that log")
        try:
            verified = verify_note(note, keys)
        except TesseraError as exc:
            raise TesseraError(ErrorCode.FORBIDDEN, f"log signature: {exc.detail}") from exc
        if request.old_size > checkpoint.size:
            raise TesseraError(ErrorCode.MALFORMED, "old size is larger than the checkpoint")
        now = int(self._clock())
        latest = self.store.latest(checkpoint.origin)
        if request.old_size != (latest.size if latest else 0):
            if latest and checkpoint.size == latest.size and \
                    checkpoint.root_hash != latest.root_hash:
                # Two log-signed trees of one size: proof of a fork, whatever old size
                # came with it.
                self.store.record_evidence(checkpoint.origin, "same size, another root",
                                           body, now)
            raise WitnessConflict(latest.size if latest else 0)
        self._check_consistency(request, checkpoint, latest, body, now)
        # Keep the log's verified signatures and ours: what the monitoring URL serves.
        log_sigs = tuple(s for s in note.signatures if any(v.matches(s) for v, _ in verified))
        cosignature = self.cosigner.cosign(note.text, timestamp=now)
        kept = Note(note.text, (*log_sigs, cosignature)).to_text()
        if not self.store.swap(checkpoint.origin, latest, checkpoint.size,
                               checkpoint.root_hash, kept, now):
            # Another request moved the state since we read it: answer as if it had
            # been first, so the client retries from the size now stored.
            moved = self.store.latest(checkpoint.origin)
            raise WitnessConflict(moved.size if moved else 0)
        return [cosignature]

    def _check_consistency(self, request: AddCheckpoint, checkpoint: Checkpoint,
                           latest: Latest | None, body: bytes, now: int) -> None:
        def refuse(reason: str) -> TesseraError:
            # tlog-witness: a validly signed but inconsistent checkpoint MAY be logged
            # as evidence of misbehaviour; it is never cosigned.
            self.store.record_evidence(checkpoint.origin, reason, body, now)
            return TesseraError(ErrorCode.INVALID_REQUEST, reason)

        if checkpoint.size == 0 and checkpoint.root_hash != merkle.EMPTY_ROOT:
            raise refuse("a checkpoint of size 0 has the empty tree's root")
        if request.old_size == 0:
            if request.proof:
                raise refuse("no consistency proof is sent from size 0")
            return
        assert latest is not None
        try:
            merkle.verify_consistency(latest.size, checkpoint.size, request.proof,
                                      latest.root_hash, checkpoint.root_hash)
        except TesseraError as exc:
            raise refuse(f"not consistent with the checkpoint cosigned at size "
                         f"{latest.size}: {exc.detail}") from exc

    def checkpoint_for(self, hashed_origin: str) -> str:
        for origin in self.logs:
            if origin_hash(origin) == hashed_origin:
                latest = self.store.latest(origin)
                if latest is not None:
                    return latest.note
        raise TesseraError(ErrorCode.NOT_FOUND, "this witness has cosigned nothing for that log")


def create_app(witness: Witness) -> FastAPI:
    """The witness's HTTP service (submission and monitoring prefix: the root)."""
    app = FastAPI(title="Tessera C2SP witness", version="1",
                  description="c2sp.org/tlog-witness add-checkpoint; cosignature/v1 lines.")
    install_problem_handlers(app)
    app.include_router(health_router({"store": witness.store.check}))

    async def conflict(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, WitnessConflict)
        # tlog-witness: the body is the latest cosigned size, not a problem document.
        # Set by hand: Starlette would append "; charset=utf-8" to a text/* media type,
        # and clients compare this one exactly.
        return Response(f"{exc.latest_size}\n".encode(), status_code=409,
                        headers={"Content-Type": SIZE_MEDIA_TYPE, "Cache-Control": "no-store"})

    app.add_exception_handler(WitnessConflict, conflict)

    @app.post("/add-checkpoint", response_class=PlainTextResponse)
    async def add_checkpoint(request: Request) -> PlainTextResponse:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY:
            raise TesseraError(ErrorCode.TOO_LARGE, "add-checkpoint body too large")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise TesseraError(ErrorCode.TOO_LARGE, "add-checkpoint body too large")
        lines = await run_in_threadpool(witness.add_checkpoint, bytes(body))
        return PlainTextResponse("".join(s.line() for s in lines),
                                 headers={"Cache-Control": "no-store"})

    @app.get("/{hashed_origin}/checkpoint", response_class=PlainTextResponse)
    def get_checkpoint(hashed_origin: str) -> PlainTextResponse:
        return PlainTextResponse(witness.checkpoint_for(hashed_origin),
                                 headers={"Cache-Control": "max-age=5"})

    @app.get("/vkey", response_class=PlainTextResponse)
    def get_vkey() -> PlainTextResponse:
        """This witness's cosigner verifier key (signature type 0x04), for log operators."""
        return PlainTextResponse(witness.cosigner.vkey + "\n")

    return app


class WitnessClient:
    """The log's side of ``add-checkpoint`` for one witness (``url`` is its submission prefix).

    Remembers the size the witness last cosigned; on a 409 it learns the
    witness's size from the body and retries once with a proof from there.
    Every returned line is checked against the witness's key before use.
    """

    def __init__(self, url: str, key: Verifier, http: httpx.Client) -> None:
        self.url = url.rstrip("/") + "/add-checkpoint"
        self.key = key
        self.http = http
        self.known_size: int | None = None

    def cosign(self, note: Note, proof_from: Callable[[int], Sequence[bytes]]) -> NoteSignature:
        checkpoint = Checkpoint.from_text(note.text)
        old = self.known_size if self.known_size is not None else 0
        for _ in range(2):
            if old > checkpoint.size:
                raise TesseraError(ErrorCode.CONFLICT,
                                   f"witness {self.key.name} has cosigned a larger tree ({old})")
            proof = tuple(proof_from(old)) if old else ()
            body = AddCheckpoint(old, proof, note).to_bytes()
            try:
                response = self.http.post(self.url, content=body,
                                          headers={"Content-Type": "text/plain; charset=utf-8"})
            except httpx.HTTPError as exc:
                raise TesseraError(ErrorCode.STATUS_UNAVAILABLE,
                                   f"witness {self.key.name} unreachable: {type(exc).__name__}"
                                   ) from exc
            if response.status_code == 409 and response.headers.get(
                    "content-type", "").startswith(SIZE_MEDIA_TYPE):
                text = response.text.strip()
                if not text.isdigit() or len(text) > 19:
                    raise TesseraError(ErrorCode.MALFORMED, "witness sent a bad 409 body")
                old = int(text)
                self.known_size = old
                continue
            if response.status_code != 200:
                raise TesseraError(ErrorCode.INVALID_REQUEST,
                                   f"witness {self.key.name} refused the checkpoint "
                                   f"({response.status_code})")
            mine = [s for s in parse_signature_lines(response.content) if self.key.matches(s)]
            if len(mine) != 1:
                raise TesseraError(ErrorCode.INVALID_SIGNATURE,
                                   f"witness {self.key.name} sent no cosignature of its key")
            self.key.verify(note.text, mine[0])
            self.known_size = checkpoint.size
            return mine[0]
        raise TesseraError(ErrorCode.CONFLICT, f"witness {self.key.name} keeps moving")


def load_logs(vkeys: Iterable[str]) -> list[Verifier]:
    """Log verifier keys (type 0x01), one per non-comment line or option."""
    keys = []
    for line in vkeys:
        line = line.strip()
        if line and not line.startswith("#"):
            key = Verifier.parse(line)
            if key.sig_type != 0x01:
                raise TesseraError(ErrorCode.INVALID_REQUEST, "a log key is a type 0x01 vkey")
            keys.append(key)
    return keys

