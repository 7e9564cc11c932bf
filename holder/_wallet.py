from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from tessera import credentials
from tessera.dcql import CredentialQuery, Query
from tessera.did import Resolver, did_key, issuer_key_lookup
from tessera.encoding import parse_json_object
from tessera.errors import ErrorCode, TesseraError
from tessera.files import write_private
from tessera.formats import sd_jwt
from tessera.keys import (
    LocalSigner,
    PublicKey,
    generate_signer,
    seal_with_passphrase,
    signer_from_jwk,
)
from tessera.keys import unseal_with_passphrase as _unseal
from tessera.typing import Clock, DIDResolver

# Version 2 adds one-time credentials (their own holder keys, spent marks), refresh
# grants and the pool setting. A version 1 file opens as is (its credentials are bound
# to the wallet's DID key: "linkable", reusable) and is written back as version 2.
WALLET_VERSION: Final = 2
READABLE_VERSIONS: Final = (1, 2)
ENROLMENT_TYP: Final = "tessera-enrolment+jwt"
KEY_ATTESTATION_TYP: Final = "key-attestation+jwt"
MAX_WALLET_BYTES: Final = 16 * 1024 * 1024
# Top the pool of a credential type up when fewer unused credentials than this remain
# after a presentation (docs/privacy.md, "The pool").
DEFAULT_TOP_UP_BELOW: Final = 3
# How long a key attestation may be used to request credentials (OpenID4VCI 1.0
# Appendix D.1: ``exp`` is required with the jwt proof type); the request follows at once.
KEY_ATTESTATION_LIFETIME_SECONDS: Final = 300


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class StoredCredential:
    id: str
    format: str
    credential: str
    issuer: str
    vct: str
    credential_type: str
    claims: dict[str, Any]
    received_at: str
    expires_at: int | None = None
    one_time: bool = False
    """Bound to a fresh holder key (batch issuance): presented at most once.
    False: bound to the wallet's DID key, so every presentation of it is linkable anyway."""
    spent_at: str | None = None
    presented_to: tuple[str, ...] = ()
    grant: str | None = None
    """The refresh grant (:class:`PoolGrant` id) that tops this credential's pool up."""
    holder_key: str | None = None
    """JWK thumbprint of its holder key. A key binds at most one credential of each type
    of one grant (a "slot", so a presentation of several types has one holder); a key
    goes to one presentation only: presenting one credential of a slot spends them all."""

    @property
    def pool(self) -> tuple[str, str]:
        """A pool is the one-time credentials of one issuer and type."""
        return (self.issuer, self.vct)


@dataclass(frozen=True)
class PoolGrant:
    """What tops a pool up without a new offer: an OAuth refresh token (RFC 6749 §6)
    for one credential configuration of one Credential Issuer (OpenID4VCI 1.0 §13.5)."""

    id: str
    credential_issuer: str
    credential_configuration_ids: tuple[str, ...]
    """Every configuration of the offer: the refresh token's access token covers each."""
    vcts: tuple[str, ...]
    refresh_token: str = field(repr=False)


@dataclass(frozen=True)
class PoolStatus:
    issuer: str
    vct: str
    credential_type: str
    unused: int
    used: int
    can_top_up: bool


@dataclass(frozen=True)
class ConsentItem:
    """One credential the wallet proposes to share, claim by claim."""

    credential_id: str
    credential_type: str
    issuer: str
    shared: dict[str, Any]
    withheld: list[str]
    use: str = "linkable"
    """``one-time`` (a fresh pool credential), ``reused`` (a spent one, the member
    allowed it) or ``linkable`` (bound to the wallet's DID key)."""
    remaining: int | None = None
    """Unused one-time credentials of this type left after this presentation."""


@dataclass(frozen=True)
class ConsentRequest:
    """Everything the member must see before anything leaves the wallet.

    Separate, informed consent per recipient (GDPR art. 7, PIPL art. 23):
    who asks (name and identifier), why, and each claim shared or withheld.
    """

    verifier_id: str
    verifier_name: str
    purpose: str
    items: list[ConsentItem]
    transaction_data: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ConsentRecord:
    at: str
    verifier_id: str
    verifier_name: str
    purpose: str
    event: str  # "shared" | "declined" | "withdrawn"
    claims: dict[str, list[str]] = field(default_factory=dict)


ConsentCallback = Callable[[ConsentRequest], bool]
Refill = Callable[[PoolGrant], object]
"""Tops a pool up (``holder._openid4vci.top_up``); raises a TesseraError when it cannot."""


class Wallet:
    """A member's wallet: one key and DID, credentials, and a consent log.

    The file is JSON whose ``sealed`` member is AES-256-GCM under a key
    derived from the passphrase (scrypt): the private key, the credentials
    and the consent log are all inside. Only the DID is in clear, so a
    member can tell wallets apart.
    """

    def __init__(
        self, path: Path, passphrase: str, signer: LocalSigner, *,
        creds: list[StoredCredential] | None = None,
        consents: list[ConsentRecord] | None = None,
        resolver: DIDResolver | None = None,
        clock: Clock = _utcnow,
        log_heads: dict[str, dict[str, Any]] | None = None,
        holder_keys: dict[str, LocalSigner] | None = None,
        grants: list[PoolGrant] | None = None,
        top_up_below: int = DEFAULT_TOP_UP_BELOW,
        log_promises: dict[str, list[str]] | None = None,
    ) -> None:
        self.path = path
        self._passphrase = passphrase
        self._signer = signer
        self.did = did_key(signer.public_key)
        self._creds = creds or []
        self._consents = consents or []
        # The last transparency-log head each brand showed (holder._audit).
        self.log_heads: dict[str, dict[str, Any]] = log_heads or {}
        # One-time credentials' holder keys, by JWK thumbprint (sealed with the rest).
        self._holder_keys: dict[str, LocalSigner] = holder_keys or {}
        self._grants: list[PoolGrant] = grants or []
        self._top_up_below = top_up_below
        # Inclusion promises (tessera-log-promise+jwt) not yet seen kept, per brand DID.
        self.log_promises: dict[str, list[str]] = log_promises or {}
        self._resolver = resolver or Resolver()
        self._clock = clock

    # -- lifecycle --------------------------------------------------------------
    @classmethod
    def create(
        cls, path: str | Path, passphrase: str, *, alg: str = "ES256",
        resolver: DIDResolver | None = None, clock: Clock = _utcnow,
        signer: LocalSigner | None = None,
    ) -> Wallet:
        """A new wallet with a fresh key, or with ``signer`` (a key the member already
        has). ES256 by default: every peer wallet and verifier we tested speaks it;
        EdDSA works with Tessera verifiers too."""
        target = Path(path)
        if target.exists():
            raise TesseraError(ErrorCode.CONFLICT, f"{target} already exists")
        if len(passphrase) < 8:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "passphrase needs 8 characters or more")
        signer = signer or generate_signer(alg)
        wallet = cls(target, passphrase, signer, resolver=resolver, clock=clock)
        wallet._signer = signer.with_key_id(f"{wallet.did}#{wallet.did.split(':')[-1]}")
        wallet.save()
        return wallet

    @classmethod
    def open(
        cls, path: str | Path, passphrase: str, *, resolver: DIDResolver | None = None,
        clock: Clock = _utcnow,
    ) -> Wallet:
        source = Path(path)
        if not source.is_file():
            raise TesseraError(ErrorCode.NOT_FOUND, f"no wallet at {source}")
        outer = parse_json_object(source.read_bytes(), max_bytes=MAX_WALLET_BYTES)
        if outer.get("version") not in READABLE_VERSIONS or not isinstance(
                outer.get("sealed"), dict):
            raise TesseraError(ErrorCode.MALFORMED, "not a Tessera wallet file")
        inner = parse_json_object(_unseal(outer["sealed"], passphrase), max_bytes=MAX_WALLET_BYTES)
        try:
            signer = signer_from_jwk(inner["key"])
            creds = [StoredCredential(**{**c, "presented_to": tuple(c.get("presented_to", ()))})
                     for c in inner.get("credentials", [])]
            consents = [ConsentRecord(**c) for c in inner.get("consents", [])]
            log_heads = dict(inner.get("log_heads", {}))
            # Absent from version 1 files: no one-time credentials, no grants yet.
            held = {name: signer_from_jwk(jwk)
                    for name, jwk in dict(inner.get("holder_keys", {})).items()}
            holder_keys = {k.public_key.thumbprint(): k for k in held.values()}
            # Early version 2 files keyed holder keys by credential id and kept one
            # grant per configuration: read both shapes.
            creds = [replace(c, holder_key=held[c.id].public_key.thumbprint())
                     if c.one_time and c.holder_key is None and c.id in held else c
                     for c in creds]
            grants = [PoolGrant(
                id=g["id"], credential_issuer=g["credential_issuer"],
                credential_configuration_ids=tuple(g.get("credential_configuration_ids")
                                                   or [g["credential_configuration_id"]]),
                vcts=tuple(g.get("vcts") or [g["vct"]]), refresh_token=g["refresh_token"])
                for g in inner.get("grants", [])]
            top_up_below = int(inner.get("top_up_below", DEFAULT_TOP_UP_BELOW))
            log_promises = {str(k): [str(t) for t in v]
                            for k, v in dict(inner.get("log_promises", {})).items()}
        except (KeyError, TypeError, ValueError, TesseraError) as exc:
            raise TesseraError(ErrorCode.MALFORMED, "wallet contents are damaged") from exc
        if any(c.one_time and c.holder_key not in holder_keys for c in creds):
            raise TesseraError(ErrorCode.MALFORMED, "wallet contents are damaged")
        wallet = cls(source, passphrase, signer, creds=creds, consents=consents,
                     resolver=resolver, clock=clock, log_heads=log_heads,
                     holder_keys=holder_keys, grants=grants, top_up_below=top_up_below,
                     log_promises=log_promises)
        if outer.get("did") != wallet.did:
            raise TesseraError(ErrorCode.MALFORMED, "wallet DID does not match its key")
        wallet._signer = signer.with_key_id(f"{wallet.did}#{wallet.did.split(':')[-1]}")
        return wallet

    def add_log_promise(self, token: str) -> str:
        """Keep a brand's inclusion promise (from a ledger write's answer) for the next
        audit, which holds the brand to it (holder._audit); returns the brand's log id.
        Only its shape is read here: the audit verifies it against the brand's DID."""
        from tessera.jose import decode_unverified

        log_id = decode_unverified(token).payload.get("log_id")
        if not isinstance(log_id, str) or not log_id.startswith("did:"):
            raise TesseraError(ErrorCode.MALFORMED, "not a log promise: no log_id DID")
        kept = self.log_promises.setdefault(log_id, [])
        if token not in kept:
            kept.append(token)
        return log_id

    def save(self) -> None:
        inner = {
            "key": self._signer.export_private_jwk(),
            "credentials": [asdict(c) for c in self._creds],
            "consents": [asdict(c) for c in self._consents],
            "log_heads": self.log_heads,
            "holder_keys": {thumb: key.export_private_jwk()
                            for thumb, key in self._holder_keys.items()},
            "grants": [asdict(g) for g in self._grants],
            "top_up_below": self._top_up_below,
            "log_promises": self.log_promises,
        }
        sealed = seal_with_passphrase(json.dumps(inner).encode(), self._passphrase)
        outer = {"version": WALLET_VERSION, "did": self.did, "sealed": sealed}
        # Write-then-rename so a crash never leaves half a wallet behind.
        write_private(self.path, json.dumps(outer).encode())

    # -- enrolment ----------------------------------------------------------------
    def enrolment_proof(self, challenge: Mapping[str, Any]) -> str:
        """Sign a brand's enrolment challenge (docs/issuer-service.md, "Enrolment proof").

        ``challenge`` is what ``POST /admin/v1/enrolment-challenges`` (or
        ``tessera issuer member challenge``) returns: ``nonce``, ``audience`` (the
        brand's DID), ``typ`` and ``expires_at``. The proof is a compact JWS with
        header ``typ: tessera-enrolment+jwt`` and ``kid`` (this wallet's key), over
        ``{iss: our DID, aud: the brand DID, nonce, iat}``.
        """
        nonce, audience = challenge.get("nonce"), challenge.get("audience")
        if not isinstance(nonce, str) or not nonce or not isinstance(audience, str) \
                or not audience.startswith("did:"):
            raise TesseraError(ErrorCode.MALFORMED,
                               "an enrolment challenge has a nonce and an audience (a DID)")
        typ = challenge.get("typ", ENROLMENT_TYP)
        if typ != ENROLMENT_TYP:
            raise TesseraError(ErrorCode.UNSUPPORTED_FORMAT,
                               f"challenge typ is {typ!r}, not {ENROLMENT_TYP}")
        now = self._clock()
        expires = challenge.get("expires_at")
        if isinstance(expires, str):
            from tessera.encoding import parse_datetime

            if parse_datetime(expires, "challenge expires_at") <= now:
                raise TesseraError(ErrorCode.EXPIRED,
                                   "the challenge has expired: ask the brand for a new one")
        from tessera.jose import sign_compact

        return sign_compact({"typ": ENROLMENT_TYP}, {
            "iss": self.did, "aud": audience, "nonce": nonce, "iat": int(now.timestamp()),
        }, self._signer)

    # -- credentials ------------------------------------------------------------
    @property
    def signer(self) -> LocalSigner:
        return self._signer

    @property
    def resolver(self) -> DIDResolver:
        return self._resolver

    def credentials(self) -> list[StoredCredential]:
        return list(self._creds)

    def get(self, credential_id: str) -> StoredCredential:
        for cred in self._creds:
            if cred.id == credential_id or cred.id.startswith(credential_id):
                return cred
        raise TesseraError(ErrorCode.NOT_FOUND, f"no credential {credential_id}")

    def receive(self, credential: str) -> StoredCredential:
        """Check and store an issued SD-JWT VC.

        The wallet verifies the issuer's signature and that the credential is
        bound to *this* wallet's key before keeping it (the reference holder
        skips this).
        """
        vc = sd_jwt.verify(
            credential, issuer_key=issuer_key_lookup(self._resolver), now=self._clock(),
            audience=None, nonce=None, require_key_binding=False,
        )
        if vc.holder_key is None or vc.holder_key != self._signer.public_key:
            raise TesseraError(ErrorCode.KEY_BINDING_INVALID, "credential is bound to another key")
        ctype = credentials.by_vct(vc.vct)
        ctype.validate(vc.claims)
        exp = vc.payload.get("exp")
        stored = StoredCredential(
            id=str(uuid.uuid4()), format="dc+sd-jwt", credential=credential, issuer=vc.issuer,
            vct=vc.vct, credential_type=ctype.name, claims=vc.claims,
            received_at=self._clock().isoformat(), expires_at=exp if isinstance(exp, int) else None,
        )
        self._creds.append(stored)
        self.save()
        return stored

    def remove(self, credential_id: str) -> None:
        target = self.get(credential_id)
        self._creds = [c for c in self._creds if c.id != target.id]
        self._forget_unused_keys()
        self.save()

    def _forget_unused_keys(self) -> None:
        wanted = {c.holder_key for c in self._creds if c.one_time}
        self._holder_keys = {t: k for t, k in self._holder_keys.items() if t in wanted}

    # -- one-time credentials: keys, attestation, pools ------------------------------
    @staticmethod
    def new_holder_keys(count: int, alg: str = "ES256") -> list[LocalSigner]:
        """Fresh holder keys, one per credential to request: never the DID key, never reused.

        ES256 whatever the DID key's algorithm: the key type shows in every presentation
        (``cnf.jwk``), so the commonest one keeps the member in the largest crowd.
        """
        if not 1 <= count <= 100:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "between 1 and 100 keys per batch")
        return [generate_signer(alg) for _ in range(count)]

    def key_attestation(self, keys: Sequence[PublicKey], *, nonce: str) -> str:
        """A ``key-attestation+jwt`` (OpenID4VCI 1.0 Appendix D.1) over ``keys``, signed
        with the enrolled DID key: the member vouches that these fresh keys are theirs,
        for this ``c_nonce`` only.

        The issuer, which knows the DID key from enrolment, binds one credential to each
        attested key; partners never see the attestation, so the keys stay unlinkable.
        """
        if not keys:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "nothing to attest")
        own = {k.thumbprint() for k in self._held_public_keys()} | {
            self._signer.public_key.thumbprint()}
        if len({k.thumbprint() for k in keys}) != len(keys) or any(
                k.thumbprint() in own for k in keys):
            # A key shared by two credentials (or the DID key itself) would link them.
            raise TesseraError(ErrorCode.KEY_BINDING_INVALID,
                               "attested keys must be fresh and distinct")
        from tessera.jose import sign_compact

        iat = int(self._clock().timestamp())
        return sign_compact({"typ": KEY_ATTESTATION_TYP}, {
            "iat": iat, "exp": iat + KEY_ATTESTATION_LIFETIME_SECONDS, "nonce": nonce,
            "attested_keys": [k.to_jwk() for k in keys],
        }, self._signer)

    def _held_public_keys(self) -> list[PublicKey]:
        return [k.public_key for k in self._holder_keys.values()]

    def receive_batch(
        self, issued: Sequence[str], keys: Sequence[LocalSigner], *,
        grant: PoolGrant | None = None,
    ) -> list[StoredCredential]:
        """Check and store one-time credentials bound to ``keys`` (one request or several,
        one per type, over the same keys).

        All or nothing: every credential must verify and be bound to one of ``keys``
        (matched by ``cnf``, not by order: OpenID4VCI 1.0 leaves the order open), and
        a key may bind at most one credential of each type; otherwise nothing is kept.
        Unused credentials of the same pool that the new ones contradict (claims changed
        since) are retired.
        """
        if not issued:
            raise TesseraError(ErrorCode.MALFORMED, "the issuer returned no credential")
        by_key = {k.public_key.thumbprint(): k for k in keys}
        if len(by_key) != len(keys):
            raise TesseraError(ErrorCode.KEY_BINDING_INVALID, "holder keys must be distinct")
        taken: set[tuple[str, str]] = set()
        batch: list[StoredCredential] = []
        for credential in issued:
            vc = sd_jwt.verify(
                credential, issuer_key=issuer_key_lookup(self._resolver), now=self._clock(),
                audience=None, nonce=None, require_key_binding=False,
            )
            thumb = vc.holder_key.thumbprint() if vc.holder_key is not None else None
            if thumb is None or thumb not in by_key or (thumb, vc.vct) in taken:
                raise TesseraError(ErrorCode.KEY_BINDING_INVALID,
                                   "a credential of the batch is not bound to a key we sent, "
                                   "or two of one type share a key")
            taken.add((thumb, vc.vct))
            ctype = credentials.by_vct(vc.vct)
            ctype.validate(vc.claims)
            exp = vc.payload.get("exp")
            batch.append(StoredCredential(
                id=str(uuid.uuid4()), format="dc+sd-jwt", credential=credential,
                issuer=vc.issuer, vct=vc.vct, credential_type=ctype.name, claims=vc.claims,
                received_at=self._clock().isoformat(),
                expires_at=exp if isinstance(exp, int) else None, one_time=True,
                grant=grant.id if grant is not None else None, holder_key=thumb,
            ))
        fresh = {(c.pool, json.dumps(c.claims, sort_keys=True)) for c in batch}
        pools = {c.pool for c in batch}
        retired = {c.id for c in self._creds if c.one_time and c.pool in pools
                   and c.spent_at is None
                   and (c.pool, json.dumps(c.claims, sort_keys=True)) not in fresh}
        self._creds = [c for c in self._creds if c.id not in retired] + batch
        self._holder_keys.update({c.holder_key: by_key[c.holder_key] for c in batch
                                  if c.holder_key is not None})
        self._forget_unused_keys()
        if grant is not None:
            self._put_grant(grant)
        self.save()
        return batch

    def _put_grant(self, grant: PoolGrant) -> None:
        # A newer offer's grant replaces the older ones it covers (same issuer and type).
        self._grants = [g for g in self._grants if g.id != grant.id and not (
            g.credential_issuer == grant.credential_issuer
            and set(g.credential_configuration_ids) <= set(grant.credential_configuration_ids))
        ] + [grant]

    def save_grant(self, grant: PoolGrant) -> None:
        """Keep (or replace) a refresh grant, at once: a rotated refresh token must
        survive a crash between the token and the credential request."""
        self._put_grant(grant)
        self.save()

    def grants(self) -> list[PoolGrant]:
        return list(self._grants)

    def drop_grant(self, grant_id: str) -> None:
        self._grants = [g for g in self._grants if g.id != grant_id]
        self.save()

    @property
    def top_up_below(self) -> int:
        return self._top_up_below

    def set_top_up_below(self, value: int) -> None:
        if not 0 <= value <= 100:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "top-up threshold must be 0..100")
        self._top_up_below = value
        self.save()

    def _unused(self, pool: tuple[str, str]) -> int:
        now = self._clock().timestamp()
        return sum(1 for c in self._creds if c.one_time and c.pool == pool and c.spent_at is None
                   and (c.expires_at is None or c.expires_at > now))

    def pools(self) -> list[PoolStatus]:
        """Each pool of one-time credentials: how many are left, whether it can top up."""
        grants = {g.id for g in self._grants}
        found: dict[tuple[str, str], list[StoredCredential]] = {}
        for cred in self._creds:
            if cred.one_time:
                found.setdefault(cred.pool, []).append(cred)
        return [PoolStatus(
            issuer=pool[0], vct=pool[1], credential_type=creds[0].credential_type,
            unused=self._unused(pool), used=sum(1 for c in creds if c.spent_at is not None),
            can_top_up=any(c.grant in grants for c in creds),
        ) for pool, creds in found.items()]

    def _grant_of(self, pool: tuple[str, str]) -> PoolGrant | None:
        ids = [c.grant for c in reversed(self._creds) if c.one_time and c.pool == pool]
        for grant in self._grants:
            if grant.id in ids:
                return grant
        return None

    def grants_running_low(self, pools: Iterable[tuple[str, str]] | None = None
                           ) -> list[PoolGrant]:
        """Grants of the pools (all, or those given) with fewer unused credentials than
        :attr:`top_up_below`."""
        wanted = set(pools) if pools is not None else {p for p in (
            c.pool for c in self._creds if c.one_time)}
        low: list[PoolGrant] = []
        for pool in wanted:
            grant = self._grant_of(pool)
            if grant is not None and grant not in low and self._unused(pool) < self._top_up_below:
                low.append(grant)
        return low

    # -- presentation -------------------------------------------------------------
    def _candidates(self, cq: CredentialQuery) -> list[tuple[StoredCredential, list[str]]]:
        now = self._clock().timestamp()
        found = []
        for cred in reversed(self._creds):  # newest first: balances go stale
            if cred.expires_at is not None and cred.expires_at <= now:
                continue
            if not cq.matches_type(fmt=cred.format, vct=cred.vct):
                continue
            option = cq.satisfied_option(cred.claims)
            if option is not None:
                found.append((cred, cq.top_level_names(option)))
        return found

    def _match(
        self, cq: CredentialQuery, *, audience: str, allow_reuse: bool, refill: Refill | None,
        refilled: set[str],
    ) -> tuple[StoredCredential, list[str], str] | None:
        """The credential to answer ``cq`` with and how it is used (see ConsentItem.use).

        An unused one-time credential first. A DID-bound one only for a type that has no
        pool (it is linkable by construction; the consent screen says so). A pool that is
        used up is topped up through ``refill``; if that fails, nothing is reused unless
        the member allowed it (``allow_reuse``): ``pool_empty``.
        """
        failure: TesseraError | None = None
        for attempt in range(2):
            found = self._candidates(cq)
            for cred, names in found:
                if cred.one_time and cred.spent_at is None:
                    return cred, names, "one-time"
            pooled = {c.pool for c in self._creds if c.one_time}
            for cred, names in found:
                if not cred.one_time and cred.pool not in pooled:
                    return cred, names, "linkable"
            if attempt or refill is None:
                break
            grants = [g for g in self._grants if g.id not in refilled
                      and any(cq.matches_type(fmt="dc+sd-jwt", vct=v) for v in g.vcts)]
            if not grants:
                break
            for grant in grants:
                refilled.add(grant.id)
                try:
                    refill(grant)
                except TesseraError as exc:
                    failure = exc
        spent = [(c, n) for c, n in self._candidates(cq) if c.one_time]
        if not spent and failure is None:
            return None  # nothing of this kind at all: the query goes unanswered
        if allow_reuse and spent:
            # Reusing links this presentation to the credential's earlier one; one
            # already shown to this verifier links nothing new across verifiers.
            spent.sort(key=lambda cn: audience not in cn[0].presented_to)
            return spent[0][0], spent[0][1], "reused"
        why = f"; topping it up failed: {failure.code.value}: {failure.detail}" \
            if failure is not None else "; no refresh grant to top it up (ask the brand " \
            "for a new offer)"
        raise TesseraError(
            ErrorCode.POOL_EMPTY,
            f"no unused one-time credential answers {cq.id!r}{why}. Reusing one lets "
            "verifiers link your presentations: only if you allow it (--allow-reuse)",
        )

    def _one_slot(self, query: Query, chosen: dict[str, tuple[StoredCredential, list[str]]],
                  uses: dict[str, str]) -> None:
        """Answer every one-time query from one slot (one holder key) when one can: a
        verifier refuses credentials of two holder keys in one answer (two members'
        credentials glued together), and one key in one presentation links nothing."""
        ids = [q for q, use in uses.items() if use == "one-time"]
        if len(ids) < 2 or len({chosen[q][0].holder_key for q in ids}) == 1:
            return
        per_query = {cq.id: {c.holder_key: (c, n) for c, n in reversed(self._candidates(cq))
                             if c.one_time and c.spent_at is None}
                     for cq in query.credentials if cq.id in ids}
        common = set.intersection(*(set(found) for found in per_query.values()))
        newest = [c.holder_key for c, _ in self._candidates(query.by_id(ids[0]))
                  if c.holder_key in common]
        if newest:
            for q in ids:
                chosen[q] = per_query[q][newest[0]]

    def plan(
        self, *, dcql: Mapping[str, Any], verifier_id: str, verifier_name: str = "",
        purpose: str = "", transaction_data: Sequence[str] = (), allow_reuse: bool = False,
        refill: Refill | None = None,
    ) -> tuple[ConsentRequest, dict[str, tuple[StoredCredential, list[str]]]]:
        """Pick credentials and claims for a DCQL query, and the consent to show."""
        if self.has_withdrawn(verifier_id):
            raise TesseraError(
                ErrorCode.CONSENT_DENIED, f"consent for {verifier_id} was withdrawn"
            )
        query = Query.parse(dcql)
        chosen: dict[str, tuple[StoredCredential, list[str]]] = {}
        uses: dict[str, str] = {}
        refilled: set[str] = set()
        for cq in query.credentials:
            match = self._match(cq, audience=verifier_id, allow_reuse=allow_reuse,
                                refill=refill, refilled=refilled)
            if match is not None:
                cred, names, use = match
                chosen[cq.id] = (cred, names)
                uses[cq.id] = use
        query.check_answered(set(chosen))  # raises when the wallet cannot answer
        self._one_slot(query, chosen, uses)
        holders = {c.holder_key if c.one_time else self.did for c, _ in chosen.values()}
        if len(holders) > 1:
            # A verifier refuses one answer with two holders (two members' credentials
            # glued together): say so before anything is spent or sent.
            raise TesseraError(
                ErrorCode.KEY_BINDING_INVALID,
                "the credentials this request needs are bound to different keys (received "
                "in separate offers, or some on the wallet's DID key): no single holder can "
                "show them together; ask the brand for one offer with every type")
        items = []
        for query_id, (cred, names) in chosen.items():
            visible = credentials.by_name(cred.credential_type).always_visible
            shared = {n: cred.claims[n] for n in [*visible, *names] if n in cred.claims}
            withheld = sorted(set(cred.claims) - set(shared))
            use = uses[query_id]
            remaining = None
            if cred.one_time:
                remaining = self._unused(cred.pool) - (1 if use == "one-time" else 0)
            items.append(ConsentItem(cred.id, cred.credential_type, cred.issuer, shared,
                                     withheld, use=use, remaining=remaining))
        consent = ConsentRequest(verifier_id, verifier_name or verifier_id, purpose, items,
                                 list(transaction_data))
        return consent, chosen

    def present(
        self, *, dcql: Mapping[str, Any], audience: str, nonce: str, consent: ConsentCallback,
        verifier_name: str = "", purpose: str = "", transaction_data: Sequence[str] = (),
        allow_reuse: bool = False, refill: Refill | None = None,
    ) -> dict[str, list[str]]:
        """Answer a request with an OpenID4VP ``vp_token`` after the member consents.

        ``consent`` is shown exactly which claims go to ``audience``; if it
        returns False nothing is presented, the refusal is logged, and
        ``consent_denied`` is raised. One-time credentials are marked spent in the
        wallet file (one atomic write, with the consent record) before the token is
        returned, so a crash can never let one go out twice.
        """
        request, chosen = self.plan(
            dcql=dcql, verifier_id=audience, verifier_name=verifier_name, purpose=purpose,
            transaction_data=transaction_data, allow_reuse=allow_reuse, refill=refill,
        )
        shared = {i.credential_type: sorted(i.shared) for i in request.items}
        if not consent(request):
            self._log(request, "declined", shared)
            raise TesseraError(ErrorCode.CONSENT_DENIED, "the member declined")
        token: dict[str, list[str]] = {}
        for query_id, (cred, names) in chosen.items():
            token[query_id] = [sd_jwt.present(
                cred.credential, disclose=names,
                holder=self._holder_keys[str(cred.holder_key)] if cred.one_time
                else self._signer,
                audience=audience, nonce=nonce, issued_at=self._clock(),
                transaction_data=list(transaction_data) or None,
            )]
        now = self._clock().isoformat()
        # Every credential on a key that went out is spent: its key now links.
        used = {cred.holder_key for cred, _ in chosen.values() if cred.one_time}
        self._creds = [replace(c, spent_at=c.spent_at or now,
                               presented_to=(*c.presented_to, audience))
                       if c.one_time and c.holder_key in used else c for c in self._creds]
        self._log(request, "shared", shared)  # saves: spent marks and record together
        return token

    # -- consent log ----------------------------------------------------------------
    def _log(self, request: ConsentRequest, event: str, claims: dict[str, list[str]]) -> None:
        self._consents.append(ConsentRecord(
            at=self._clock().isoformat(), verifier_id=request.verifier_id,
            verifier_name=request.verifier_name, purpose=request.purpose, event=event,
            claims=claims,
        ))
        self.save()

    def consent_log(self) -> list[ConsentRecord]:
        return list(self._consents)

    def export_consents(self) -> str:
        return json.dumps([asdict(c) for c in self._consents], indent=2)

    def withdraw(self, verifier_id: str) -> None:
        """Stop future sharing with ``verifier_id``; recorded in the log."""
        self._consents.append(ConsentRecord(
            at=self._clock().isoformat(), verifier_id=verifier_id, verifier_name=verifier_id,
            purpose="", event="withdrawn",
        ))
        self.save()

    def grant(self, verifier_id: str) -> None:
        """Allow a verifier again after a withdrawal (asked anew each time)."""
        self._consents.append(ConsentRecord(
            at=self._clock().isoformat(), verifier_id=verifier_id, verifier_name=verifier_id,
            purpose="", event="regranted",
        ))
        self.save()

    def has_withdrawn(self, verifier_id: str) -> bool:
        for record in reversed(self._consents):
            if record.verifier_id == verifier_id and record.event in ("withdrawn", "regranted"):
                return record.event == "withdrawn"
        return False
