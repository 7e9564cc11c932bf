"""Issue a member's credentials from the ledger: SD-JWT VC or Data Integrity, with status.

Used by the OpenID4VCI credential endpoint. One request issues a batch
(OpenID4VCI 1.0 §3.3.2, §8): one Credential Dataset, and per credential its
own holder key, salts, decoys and random status-list slot, so that no two
presentations of a batch share a value the verifier did not ask for.

* Timestamps are coarsened (:data:`TIME_GRANULARITY`): ``iat`` and ``nbf``
  are the issuance time rounded down to the hour, ``exp`` the policy's end
  rounded down to the hour. A batch then shares no time rarer than "issued by
  this brand, of this type, in this hour", which every other member issued in
  that hour shares too.
* Each credential gets an ``issued_credential`` row; the rows of a response
  share a ``batch_id`` and the digest of their dataset. A new batch
  supersedes (and revokes) the member's earlier credentials of the same type
  and format whose dataset differs: the claims changed. Earlier credentials
  with the same dataset stay valid, so a wallet topping up its pool keeps the
  unused rest (§13.2: no revocation solely because of a new request), and a
  batch never supersedes its own siblings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from sqlmodel import Session

from issuer import _ledger
from issuer._admin import tiers_of
from issuer._credentials import Program as CredentialProgram
from issuer._keystore import KeyStore
from issuer._models import (
    Brand,
    IssuedCredential,
    Member,
    Program,
    StatusListKind,
    Tier,
    new_id,
)
from issuer._settings import Settings
from issuer._status_lists import (
    _cryptosuite,
    allocate,
    bitstring_entries,
    mark_superseded,
    token_status_claim,
)
from tessera import credentials
from tessera.credentials import CredentialType
from tessera.encoding import canonical_json
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import data_integrity, sd_jwt
from tessera.keys import PublicKey

__all__ = [
    "CONFIGURATIONS",
    "Configuration",
    "coarse_time",
    "issue_batch",
    "issue_for_member",
    "issuer_url",
    "ledger_checkpoint",
    "status_list_url",
]

SD_JWT: Final = "dc+sd-jwt"
LDP_VC: Final = "ldp_vc"
MEMBERSHIP_TTL: Final = timedelta(days=30)
POINTS_TTL: Final = timedelta(hours=24)
# The unit iat, nbf and exp of an SD-JWT VC are rounded down to: the anonymity
# set of a batch's times is every credential of the brand and type issued in
# the same hour. A day would hide more but cut a 24-hour points credential
# issued late in the day to minutes; an hour costs at most an hour of validity.
TIME_GRANULARITY: Final = timedelta(hours=1)


@dataclass(frozen=True)
class Configuration:
    """One entry of ``credential_configurations_supported`` (OpenID4VCI §12.2.4)."""

    id: str
    ctype: CredentialType
    format: str


CONFIGURATIONS: Final[dict[str, Configuration]] = {
    c.id: c for c in (
        Configuration(f"{t.name}_sd_jwt", t, SD_JWT) for t in credentials.CREDENTIAL_TYPES
    )
} | {
    c.id: c for c in (
        Configuration(f"{t.name}_ldp_vc", t, LDP_VC) for t in credentials.CREDENTIAL_TYPES
    )
}


def issuer_url(settings: Settings, brand: Brand) -> str:
    """The Credential Issuer Identifier of a brand (OpenID4VCI §12.2.1)."""
    return f"{settings.public_url}/brands/{brand.slug}"


def status_list_url(settings: Settings, brand: Brand, list_id: str) -> str:
    return f"{issuer_url(settings, brand)}/status/{list_id}"


def ledger_checkpoint(session: Session, member: Member) -> tuple[int, str]:
    """The brand's transparency-log head (size, root) the balance is computed at.

    :func:`issuer._ledger.checked_balance` put the member's pending leaves into
    the tree first, so the head read here covers every entry the balance counts.
    """
    from issuer._translog import checkpoint

    return checkpoint(session, member.brand_id)


def _program_claim(settings: Settings, brand: Brand, program: Program,
                   tiers: list[Tier]) -> CredentialProgram:
    return CredentialProgram(
        id=f"{issuer_url(settings, brand)}/programs/{program.id}", name=program.name,
        brand=brand.did, tiers=[(t.name, t.rank) for t in tiers],
        points_ladder=tuple(program.points_ladder))


def _claims(session: Session, *, settings: Settings, brand: Brand, member: Member,
            ctype: CredentialType, now: datetime) -> tuple[dict[str, Any], datetime,
                                                        CredentialProgram]:
    program = session.get(Program, member.program_id)
    assert program is not None  # foreign key
    tiers = tiers_of(session, program_id=program.id)
    prog = _program_claim(settings, brand, program, tiers)
    if ctype is credentials.MEMBERSHIP:
        tier = next((t for t in tiers if t.id == member.tier_id), None)
        if tier is None:
            raise TesseraError(ErrorCode.CONFLICT, "the member holds no tier yet")
        until = member.tier_valid_until or (now + timedelta(days=365))
        claims = credentials.membership_claims(
            program=prog.as_claim(), membership_number=member.membership_number,
            tier=tier.name, tiers=prog.tiers, member_since=member.enrolled_at.date(),
            tier_valid_until=until.date())
        tier_end = datetime.combine(until.date(), datetime.max.time(), tzinfo=UTC)
        return claims, min(now + MEMBERSHIP_TTL, tier_end), prog
    bal = _ledger.checked_balance(session, member=member, now=now)
    nxt: tuple[int, date] | None = None
    if bal.expiring_next is not None:
        nxt = (bal.expiring_next.points, bal.expiring_next.at.date())
    claims = credentials.points_claims(
        program=prog.as_claim(), membership_number=member.membership_number,
        balance=bal.available, as_of=now, checkpoint=ledger_checkpoint(session, member),
        expiring_next=nxt, ladder=prog.points_ladder)
    return claims, now + POINTS_TTL, prog


def coarse_time(at: datetime, unit: timedelta = TIME_GRANULARITY) -> datetime:
    """``at`` rounded down to a multiple of ``unit`` since the epoch (UTC)."""
    step = int(unit.total_seconds())
    return datetime.fromtimestamp(int(at.timestamp()) // step * step, UTC)


_WHEN_READ: Final = frozenset({"as_of", "checkpoint"})


def _dataset_digest(claims: dict[str, Any]) -> str:
    # ``as_of`` and the log ``checkpoint`` say when the balance was read, not the state it
    # states: every member's ledger write moves the brand's log head, and counting it would
    # make each top-up revoke the unused rest of the pool (§13.2 forbids revoking solely
    # for a new request). An older checkpoint stays a prefix the audit can still prove.
    state = {k: v for k, v in claims.items() if k not in _WHEN_READ}
    return hashlib.sha256(canonical_json(state)).hexdigest()


def issue_for_member(session: Session, *, settings: Settings, keystore: KeyStore,
                     brand: Brand, member: Member, configuration_id: str,
                     holder_key: PublicKey, now: datetime) -> tuple[Any, IssuedCredential]:
    """Issue one credential of ``configuration_id`` bound to ``holder_key`` / the member's DID."""
    issued = issue_batch(session, settings=settings, keystore=keystore, brand=brand,
                         member=member, configuration_id=configuration_id,
                         holder_keys=[holder_key], now=now)
    return issued[0]


def issue_batch(session: Session, *, settings: Settings, keystore: KeyStore, brand: Brand,
                member: Member, configuration_id: str, holder_keys: Sequence[PublicKey],
                now: datetime) -> list[tuple[Any, IssuedCredential]]:
    """Issue one credential of ``configuration_id`` per holder key, as one batch.

    The caller checked the keys (each proven or attested by the member, none
    twice); this only refuses a repeated key, which would link two
    credentials of the batch by their ``cnf``.
    """
    config = CONFIGURATIONS.get(configuration_id)
    if config is None:
        raise TesseraError(ErrorCode.NOT_FOUND, "unknown credential configuration")
    if not holder_keys:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "a batch needs at least one holder key")
    if len({k.thumbprint() for k in holder_keys}) != len(holder_keys):
        raise TesseraError(ErrorCode.KEY_BINDING_INVALID,
                           "each holder key binds at most one credential of a batch")
    claims, expires, _ = _claims(session, settings=settings, brand=brand, member=member,
                                 ctype=config.ctype, now=now)
    signer = keystore.signer(session, brand_id=brand.id, did=brand.did)
    kind = StatusListKind.TOKEN if config.format == SD_JWT else StatusListKind.BITSTRING
    batch_id = new_id()
    dataset = _dataset_digest(claims)
    issued_at = coarse_time(now)
    coarse_expiry = coarse_time(expires)
    if coarse_expiry <= issued_at:
        # Rounding would leave nothing: a tier that ends within the hour.
        coarse_expiry = expires
    out: list[tuple[Any, IssuedCredential]] = []
    taken: set[tuple[str, int]] = set()
    # The batch's rows go in with one flush after the loop (a flush per row was a third
    # of a batch's time: bench/README.md, "Issuance profile (session 4)"); the slots
    # picked so far are passed on, so those of a batch are distinct as well as random.
    with session.no_autoflush:
        for holder_key in holder_keys:
            out.append(_issue_one(session, settings=settings, brand=brand, member=member,
                                  config=config, claims=claims, signer=signer, kind=kind,
                                  holder_key=holder_key, batch_id=batch_id, dataset=dataset,
                                  issued_at=issued_at, expires=expires,
                                  coarse_expiry=coarse_expiry, now=now, taken=taken))
            taken.add((out[-1][1].status_list_id, out[-1][1].status_index))
    session.flush()
    mark_superseded(session, new=[row for _, row in out], now=now)
    return out


def _issue_one(session: Session, *, settings: Settings, brand: Brand, member: Member,
               config: Configuration, claims: dict[str, Any], signer: Any,
               kind: StatusListKind, holder_key: PublicKey, batch_id: str, dataset: str,
               issued_at: datetime, expires: datetime, coarse_expiry: datetime,
               now: datetime, taken: set[tuple[str, int]]) -> tuple[Any, IssuedCredential]:
    """One credential of a batch and its row (added to the session, not yet flushed)."""
    shard, idx = allocate(session, brand_id=brand.id, kind=kind, now=now, taken=taken)
    list_url = status_list_url(settings, brand, shard.id)
    cred_id = new_id()
    credential: Any
    if config.format == SD_JWT:
        credential = sd_jwt.issue_credential(
            config.ctype, claims, signer=signer, issuer=brand.did, holder_key=holder_key,
            issued_at=issued_at, not_before=issued_at, expires_at=coarse_expiry,
            status=token_status_claim(list_url, idx))
        row_expires = coarse_expiry
    else:
        vc = data_integrity.loyalty_credential(
            config.ctype, claims, issuer=brand.did, subject=member.did, valid_from=now,
            valid_until=expires, credential_id=f"urn:uuid:{cred_id}")
        vc["credentialStatus"] = bitstring_entries(list_url, idx)
        credential = data_integrity.issue(vc, signer=signer,
                                          cryptosuite=_cryptosuite(signer),
                                          verification_method=signer.key_id or "",
                                          created=now)
        row_expires = expires
    row = IssuedCredential(id=cred_id, brand_id=brand.id, member_id=member.id,
                           credential_type=config.ctype.name, format=config.format,
                           status_list_id=shard.id, status_index=idx, issued_at=now,
                           expires_at=row_expires,
                           holder_key_thumbprint=holder_key.thumbprint(),
                           batch_id=batch_id, dataset_sha256=dataset)
    session.add(row)
    return credential, row
