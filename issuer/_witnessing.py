"""Each brand's points log in C2SP form: checkpoints, tiles, witness cosignatures.

* The **checkpoint** (c2sp.org/tlog-checkpoint) of a signed tree head: origin
  line :func:`tessera.pointslog.log_origin` (the log's URL prefix, from the
  brand's did:web), the size and the base64 root, signed as a note by the
  brand's active Ed25519 key under the origin as key name. That key is the one
  the brand's DID document lists for ``assertionMethod``; the document's
  ``#transparency-log`` service also states the origin and the vkeys. Reusing
  it is safe across protocols: a note text ends in a newline, which no JWS
  signing input (base64url, a dot, base64url) contains. Ed25519 is
  deterministic, so the note is re-made from the tree on demand: only the
  witnesses' cosignatures are stored (:class:`issuer._log_models.LogCosignature`).
* **Tiles** (c2sp.org/tlog-tiles): hash tiles computed from the stored
  complete-subtree hashes (a level-L tile hash is the node 8L levels up),
  and entry bundles of the leaf texts when the operator makes them public
  (``TESSERA_LOG_PUBLIC_ENTRIES``); an erased member's leaves make their
  bundle unavailable while every hash tile still serves.
* **Witnesses** (c2sp.org/tlog-witness): each new checkpoint is sent to the
  configured witnesses with a consistency proof from the size each last
  cosigned; their ``cosignature/v1`` lines are checked and kept. The calls
  happen outside any database transaction (a witness round trip must not
  hold SQLite's write lock), each proof read in a short read transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import httpx
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from issuer import _translog
from issuer._db import read_scope, session_scope
from issuer._log_models import LogCosignature, TreeHead
from issuer._models import Brand, BrandKeyPublic
from tessera.encoding import b64url_decode
from tessera.errors import ErrorCode, TesseraError
from tessera.keys import PublicKey
from tessera.pointslog import log_origin
from tessera.tlog import (
    Checkpoint,
    Note,
    NoteSignature,
    NoteSigner,
    TileRef,
    Verifier,
    encode_bundle,
    parse_signature_lines,
    tile_hashes,
)
from tessera.witness import WitnessClient

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from issuer._keystore import KeyStore
    from issuer._settings import Settings

__all__ = [
    "LOG_SERVICE_TYPE",
    "checkpoint_note",
    "cosign",
    "entry_bundle",
    "log_service",
    "published",
    "tile",
    "witness_brand",
]

LOG_SERVICE_TYPE: Final = "C2SPTransparencyLog"
_log = logging.getLogger("tessera.issuer.witnessing")
# (brand id, witness URL) -> the size that witness last cosigned, so the next
# submission carries the right old size at once (a restart learns it from a 409).
_known_sizes: dict[tuple[str, str], int] = {}
_known_lock = threading.Lock()
RETRY_SECONDS: Final = 30.0
"""After a witness fails, it is not asked again for this long: requests for a checkpoint
(anyone may send them) must not turn into a stream of calls that each wait for a witness
that is down."""
_retry_at: dict[tuple[str, str], float] = {}


def note_signer(session: Session, keystore: KeyStore, brand: Brand) -> NoteSigner:
    signer = keystore.signer(session, brand_id=brand.id, did=brand.did)
    if signer.alg != "EdDSA":
        raise TesseraError(ErrorCode.UNSUPPORTED_ALGORITHM,
                           "C2SP checkpoints are signed with Ed25519: rotate the brand to an "
                           "EdDSA key")
    return NoteSigner(log_origin(brand.did), signer)


def log_service(did: str, keys: Sequence[BrandKeyPublic], endpoint: str) -> dict[str, Any]:
    """The DID document's ``service`` entry of the brand's log (every Ed25519 key's vkey)."""
    origin = log_origin(did)
    vkeys = [Verifier.for_key(origin, PublicKey.from_jwk(k.public_jwk)).vkey()
             for k in keys if k.alg == "EdDSA"]
    return {"id": f"{did}#transparency-log", "type": LOG_SERVICE_TYPE,
            "serviceEndpoint": endpoint, "origin": origin, "vkeys": vkeys}


def _stored(session: Session, brand_id: str, size: int, text: str,
            witnesses: Sequence[Verifier]) -> list[NoteSignature]:
    """The kept cosignatures of configured witnesses that sign exactly ``text``.

    A cosignature of another tree of this size (kept before the tree was
    rewritten) or of a witness no longer configured is not published.
    """
    lines = session.exec(select(LogCosignature.line).where(
        LogCosignature.brand_id == brand_id, LogCosignature.tree_size == size)
        .order_by(col(LogCosignature.witness))).all()
    kept = []
    for sig in (sig for line in lines for sig in parse_signature_lines(line)):
        for key in witnesses:
            if key.matches(sig):
                try:
                    key.verify(text, sig)
                except TesseraError:
                    break
                kept.append(sig)
                break
    return kept


def checkpoint_note(session: Session, *, keystore: KeyStore, brand: Brand, size: int,
                    witnesses: Sequence[Verifier] = ()) -> Note:
    """The checkpoint of a signed head of ``size`` with its kept ``witnesses``' cosignatures."""
    head = session.get(TreeHead, (brand.id, size))
    if head is None:
        raise TesseraError(ErrorCode.NOT_FOUND, "no signed head of that size")
    note = Checkpoint(log_origin(brand.did), size, b64url_decode(head.root_hash)).sign(
        [note_signer(session, keystore, brand)])
    return note.with_signatures(_stored(session, brand.id, size, note.text, witnesses))


def latest_size(session: Session, *, keystore: KeyStore, brand: Brand, now: datetime) -> int:
    """The size of the current signed head: pending leaves integrated first (as ``/log/sth``
    does), so the checkpoint covers every committed write."""
    _translog.catch_up(session, brand.id, now=now, keystore=keystore)
    return _translog.signed_head(
        session, brand_id=brand.id, log_id=brand.did, now=now,
        signer=lambda: keystore.signer(session, brand_id=brand.id, did=brand.did)).tree_size


def _witness_keys(settings: Settings) -> list[tuple[str, Verifier]]:
    return [(url, Verifier.parse(vkey)) for url, vkey in settings.witnesses]


def cosign(engine: Engine, *, settings: Settings, keystore: KeyStore, brand: Brand, size: int,
           http: httpx.Client) -> Note:
    """Ask each configured witness that has not cosigned ``size`` yet; keep what they sign.

    A witness that refuses or cannot be reached is logged and skipped: the
    quorum is each member's to require (:mod:`holder._audit`).
    A witness that has moved past ``size`` cannot cosign it any more (it never
    cosigns a smaller tree); the later head it did cosign covers this one.
    """
    keys = _witness_keys(settings)
    with read_scope(engine) as session:
        note = checkpoint_note(session, keystore=keystore, brand=brand, size=size,
                               witnesses=[key for _, key in keys])
    done = {s.name for s in note.signatures}

    def proof_from(old: int) -> list[bytes]:
        with read_scope(engine) as s:
            return _translog.consistency_proof(s, brand.id, old, size)

    fresh: list[NoteSignature] = []
    for url, key in keys:
        if key.name in done:
            continue
        client = WitnessClient(url, key, http)
        with _known_lock:
            client.known_size = _known_sizes.get((brand.id, url))
            if _retry_at.get((brand.id, url), 0.0) > time.monotonic():
                continue
        try:
            fresh.append(client.cosign(note, proof_from))
        except TesseraError as exc:
            _log.warning("witness %s did not cosign %s at %d: %s", key.name, brand.slug, size,
                         exc.detail)
            if exc.code is ErrorCode.STATUS_UNAVAILABLE:  # unreachable, not a refusal
                with _known_lock:
                    _retry_at[(brand.id, url)] = time.monotonic() + RETRY_SECONDS
        finally:
            if client.known_size is not None:
                with _known_lock:
                    _known_sizes[(brand.id, url)] = client.known_size
    for sig in fresh:
        try:
            with session_scope(engine) as session:
                # merge: a kept line of another tree of this size (before a rewrite) is
                # replaced by the one that signs this tree.
                session.merge(LogCosignature(brand_id=brand.id, tree_size=size,
                                             witness=sig.name, line=sig.line()))
        except IntegrityError:
            pass  # another worker stored this witness's cosignature first
    return note.with_signatures(fresh)


def witness_brand(engine: Engine, *, settings: Settings, keystore: KeyStore,
                  http: httpx.Client, brand_id: str) -> None:
    """After a sequencer batch: send the brand's newest signed head to its witnesses.

    The hook of :class:`issuer._translog.Sequencer`: it runs after the batch's
    transaction committed, so no witness round trip holds the log row.
    """
    with read_scope(engine) as session:
        brand = session.get(Brand, brand_id)
        size = session.exec(select(func.max(TreeHead.tree_size))
                            .where(TreeHead.brand_id == brand_id)).one()
    if brand is None or size is None or not settings.witnesses:
        return
    cosign(engine, settings=settings, keystore=keystore, brand=brand, size=int(size), http=http)


def published(engine: Engine, *, settings: Settings, keystore: KeyStore, http: httpx.Client,
              slug: str, size: int | None, now: datetime) -> Note:
    """The checkpoint at ``size`` (None: the current head, signed now if the tree grew).

    The newest signed head is sent to the witnesses that have not cosigned it
    yet; an older one is served with the cosignatures it gathered (witnesses
    never cosign a tree smaller than their last, so asking again is pointless).
    """
    from issuer._admin import brand_by_slug

    with session_scope(engine) as session:
        brand = brand_by_slug(session, slug=slug)
        newest = latest_size(session, keystore=keystore, brand=brand, now=now)
        if size is None or size == newest:
            size = newest
        elif size > newest:
            raise TesseraError(ErrorCode.NOT_FOUND, "no signed head of that size")
        else:
            return checkpoint_note(session, keystore=keystore, brand=brand, size=size,
                                   witnesses=[key for _, key in _witness_keys(settings)])
    return cosign(engine, settings=settings, keystore=keystore, brand=brand, size=size, http=http)


def tile(session: Session, brand_id: str, ref: TileRef) -> bytes:
    """A hash tile from the stored nodes; ``not_found`` until the tree has all of it."""
    size = _translog.log_state(session, brand_id).size
    if ref.level is None or not ref.exists_at(size):
        raise TesseraError(ErrorCode.NOT_FOUND, "no such tile in this log yet")
    source = _translog.SqlHashSource(session, brand_id)
    return source.run(lambda s: tile_hashes(s, ref))


def entry_bundle(session: Session, brand_id: str, ref: TileRef, *, public: bool) -> bytes:
    """An entry bundle (the leaf texts), when the operator publishes them."""
    from issuer._log_models import LogLeafData

    if not public:
        raise TesseraError(ErrorCode.NOT_FOUND, "this log publishes hash tiles only; members "
                                                "read their own entries")
    size = _translog.log_state(session, brand_id).size
    if ref.level is not None or not ref.exists_at(size):
        raise TesseraError(ErrorCode.NOT_FOUND, "no such entry bundle in this log yet")
    start = ref.start()
    rows = session.exec(select(LogLeafData.data).where(
        LogLeafData.brand_id == brand_id, col(LogLeafData.idx) >= start,
        col(LogLeafData.idx) < start + ref.width).order_by(col(LogLeafData.idx))).all()
    if len(rows) != ref.width or any(data is None for data in rows):
        raise TesseraError(ErrorCode.NOT_FOUND, "an entry of this bundle was erased; its hash "
                                                "stays in the tiles")
    return encode_bundle(data.encode() for data in rows if data is not None)
