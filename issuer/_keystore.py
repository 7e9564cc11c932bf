"""Brand signing keys: generated here, sealed at rest, rotated without breaking old credentials.

Private JWKs are sealed with :func:`tessera.keys.seal` (AES-256-GCM) under the
service master key. The AAD binds each box to its brand and key id, so a
sealed key copied onto another brand's row does not unseal. Signers come back
as :class:`tessera.keys.LocalSigner` whose ``key_id`` is the did:web
verification method (``did:web:...#key-N``), the value a JWS ``kid`` and a
Data Integrity ``verificationMethod`` need.

Rotation adds a key and retires the previous one: retired keys stop signing
but stay in the DID document's ``assertionMethod``, so credentials they
signed keep verifying (DID Core §5.3.2; did:web has no history, the document
is the only place a verifier can find the old key).

Unsealed signers are cached per process, one per brand, keyed by the active
key's id and public key: every call still reads which key is active, so a
rotation (or a retirement by another worker) takes effect on the next
request and replaces the cached signer; only the unsealing, the JWK parsing
and the public-key check are saved.
"""

from __future__ import annotations

import threading
from typing import Any, Final, Protocol

import sqlalchemy
from sqlalchemy import bindparam, event, update
from sqlalchemy.engine import Row
from sqlmodel import Session, col

from issuer._db import core, table_of
from issuer._models import BrandKey, BrandKeyPublic, KeyStatus, utcnow
from tessera.encoding import canonical_json, parse_json_object
from tessera.errors import ErrorCode, TesseraError
from tessera.keys import LocalSigner, generate_signer, seal, signer_from_jwk, unseal
from tessera.typing import Signer

__all__ = ["DID_CONTEXT", "KeyStore", "SqlKeyStore", "did_document"]

# Read as plain rows (issuer._db.core): every redemption reads them, nothing updates
# them through an object (rotate is an UPDATE of its own).
_BRAND_KEYS: Final = sqlalchemy.select(table_of(BrandKey)).where(
    col(BrandKey.brand_id) == bindparam("brand_id"))
_RETIRE_ACTIVE: Final = (update(BrandKey)
                         .where(col(BrandKey.brand_id) == bindparam("of_brand"),
                                col(BrandKey.status) == KeyStatus.ACTIVE)
                         .values(status=KeyStatus.RETIRED, retired_at=bindparam("now")))
_KEYS_MEMO: Final = "tessera.keystore.keys"  # Session.info: brand id -> its keys, this transaction

DID_CONTEXT = ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/suites/jws-2020/v1"]


class KeyStore(Protocol):
    """Where brand keys live. A KMS-backed store implements the same four calls."""

    def generate(self, session: Session, *, brand_id: str, did: str,
                 alg: str = "EdDSA") -> BrandKeyPublic: ...

    def rotate(self, session: Session, *, brand_id: str, did: str,
               alg: str | None = None) -> BrandKeyPublic: ...

    def signer(self, session: Session, *, brand_id: str, did: str) -> Signer: ...

    def public_keys(self, session: Session, *, brand_id: str, did: str
                    ) -> list[BrandKeyPublic]: ...


def _public(key: BrandKey | Row[Any], did: str) -> BrandKeyPublic:
    return BrandKeyPublic(kid=key.kid, verification_method=f"{did}#{key.kid}", alg=key.alg,
                          public_jwk=key.public_jwk, status=key.status,
                          created_at=key.created_at, retired_at=key.retired_at)


class SqlKeyStore:
    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise TesseraError(ErrorCode.MALFORMED, "master key must be 32 bytes")
        self._master_key = master_key
        # brand id -> (kid, did, public JWK, signer) of its active key when last asked.
        self._signers: dict[str, tuple[str, str, dict[str, Any], LocalSigner]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "SqlKeyStore()"

    @staticmethod
    def _aad(brand_id: str, kid: str) -> bytes:
        return canonical_json({"brand": brand_id, "kid": kid, "use": "tessera-brand-key"})

    def _keys(self, session: Session, brand_id: str) -> list[Row[Any]]:
        # Read once per transaction: a redemption checks the credential against the
        # brand's keys and signs its receipt with the active one (one SELECT, not two).
        # generate and rotate drop it, so a rotation is seen by the rest of its own
        # transaction, and every new transaction reads the keys afresh (another
        # worker's rotation is seen on the next request).
        memo: dict[str, list[Row[Any]]] = session.info.setdefault(_KEYS_MEMO, {})
        found = memo.get(brand_id)
        if found is None:
            # key-1, key-2, ...: numeric order (key-10 after key-9), oldest first.
            found = memo[brand_id] = sorted(core(session, _BRAND_KEYS, {"brand_id": brand_id}),
                                            key=lambda k: int(k.kid.removeprefix("key-")))
        return list(found)

    def remember_keys(self, session: Session, brand_id: str, rows: list[Row[Any]]) -> None:
        """The brand's keys as a caller read them in this transaction (every column of
        ``brand_key`` among the row's), so that :meth:`_keys` needs no read of its own:
        a partner request reads its partner key and the brand's keys in one statement
        (issuer._redemption.authenticate_partner)."""
        session.info.setdefault(_KEYS_MEMO, {})[brand_id] = sorted(
            rows, key=lambda k: int(k.kid.removeprefix("key-")))

    def generate(self, session: Session, *, brand_id: str, did: str,
                 alg: str = "EdDSA") -> BrandKeyPublic:
        session.info.get(_KEYS_MEMO, {}).pop(brand_id, None)
        existing = self._keys(session, brand_id)
        kid = f"key-{len(existing) + 1}"
        signer = generate_signer(alg)
        box = seal(canonical_json(signer.export_private_jwk()), self._master_key,
                   aad=self._aad(brand_id, kid))
        row = BrandKey(brand_id=brand_id, kid=kid, alg=signer.alg,
                       public_jwk=signer.public_key.to_jwk(), sealed_private=box,
                       status=KeyStatus.ACTIVE)
        session.add(row)
        session.flush()
        session.info.get(_KEYS_MEMO, {}).pop(brand_id, None)
        return _public(row, did)

    def rotate(self, session: Session, *, brand_id: str, did: str,
               alg: str | None = None) -> BrandKeyPublic:
        session.info.get(_KEYS_MEMO, {}).pop(brand_id, None)
        active = [k for k in self._keys(session, brand_id) if k.status == KeyStatus.ACTIVE]
        session.flush()  # a key changed through an object is written before the UPDATE
        core(session, _RETIRE_ACTIVE, {"of_brand": brand_id, "now": utcnow()})
        new_alg = alg or (active[-1].alg if active else "EdDSA")
        return self.generate(session, brand_id=brand_id, did=did, alg=new_alg)

    def signer(self, session: Session, *, brand_id: str, did: str) -> LocalSigner:
        active = [k for k in self._keys(session, brand_id) if k.status == KeyStatus.ACTIVE]
        if not active:
            raise TesseraError(ErrorCode.KEY_NOT_FOUND, "brand has no active signing key")
        key = active[-1]
        with self._lock:
            cached = self._signers.get(brand_id)
        if cached is not None and cached[:3] == (key.kid, did, key.public_jwk):
            return cached[3]
        raw = unseal(key.sealed_private, self._master_key, aad=self._aad(brand_id, key.kid))
        jwk: dict[str, Any] = parse_json_object(raw)
        signer = signer_from_jwk(jwk, key_id=f"{did}#{key.kid}")
        if signer.public_key.to_jwk() != key.public_jwk:
            raise TesseraError(ErrorCode.KEY_NOT_FOUND, "sealed key does not match its public key")
        with self._lock:
            if len(self._signers) >= 10_000 and brand_id not in self._signers:
                self._signers.pop(next(iter(self._signers)))  # bounded: oldest brand out
            self._signers[brand_id] = (key.kid, did, dict(key.public_jwk), signer)
        return signer

    def cached_kid(self, brand_id: str) -> str | None:
        """The key id of the brand's cached signer, if any (for tests and diagnostics)."""
        with self._lock:
            cached = self._signers.get(brand_id)
        return None if cached is None else cached[0]

    def public_keys(self, session: Session, *, brand_id: str, did: str) -> list[BrandKeyPublic]:
        return [_public(k, did) for k in self._keys(session, brand_id)]


@event.listens_for(Session, "after_commit")
@event.listens_for(Session, "after_rollback")
def _forget_keys(session: Session) -> None:
    # A session used for several transactions reads the keys again in each.
    session.info.pop(_KEYS_MEMO, None)


def did_document(did: str, keys: list[BrandKeyPublic]) -> dict[str, Any]:
    """The brand's did:web document: every active and retired key may assert."""
    methods = [{"id": k.verification_method, "type": "JsonWebKey2020", "controller": did,
                "publicKeyJwk": k.public_jwk} for k in keys]
    active = [k.verification_method for k in keys if k.status == KeyStatus.ACTIVE]
    return {
        "@context": DID_CONTEXT,
        "id": did,
        "verificationMethod": methods,
        "assertionMethod": [k.verification_method for k in keys],
        "authentication": active,
    }
