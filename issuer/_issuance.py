"""Issue a member's credentials from the ledger: SD-JWT VC or Data Integrity, with status.

Used by the OpenID4VCI credential endpoint. Every credential gets a random
slot in one of the brand's status lists and an ``issued_credential`` row;
the member's earlier credentials of the same type and format are marked
superseded (and revoked, if they still were valid).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from sqlmodel import Session

from issuer import _ledger
from issuer._admin import tiers_of
from issuer._credentials import CredentialIssuer
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
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import data_integrity
from tessera.jose import decode_unverified
from tessera.keys import PublicKey

__all__ = [
    "CONFIGURATIONS",
    "Configuration",
    "issue_for_member",
    "issuer_url",
    "ledger_checkpoint",
    "status_list_url",
]

SD_JWT: Final = "dc+sd-jwt"
LDP_VC: Final = "ldp_vc"
MEMBERSHIP_TTL: Final = timedelta(days=30)
POINTS_TTL: Final = timedelta(hours=24)


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

    The ledger appends in the same transaction as the balance it shows, so the
    head read here covers every entry the balance counts.
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


def issue_for_member(session: Session, *, settings: Settings, keystore: KeyStore,
                     brand: Brand, member: Member, configuration_id: str,
                     holder_key: PublicKey, now: datetime) -> tuple[Any, IssuedCredential]:
    """Issue one credential of ``configuration_id`` bound to ``holder_key`` / the member's DID."""
    config = CONFIGURATIONS.get(configuration_id)
    if config is None:
        raise TesseraError(ErrorCode.NOT_FOUND, "unknown credential configuration")
    claims, expires, prog = _claims(session, settings=settings, brand=brand, member=member,
                                    ctype=config.ctype, now=now)
    signer = keystore.signer(session, brand_id=brand.id, did=brand.did)
    kind = StatusListKind.TOKEN if config.format == SD_JWT else StatusListKind.BITSTRING
    shard, idx = allocate(session, brand_id=brand.id, kind=kind, now=now)
    list_url = status_list_url(settings, brand, shard.id)
    cred_id = new_id()
    credential: Any
    if config.format == SD_JWT:
        issuer = CredentialIssuer(signer=signer, did=brand.did, program=prog, clock=lambda: now,
                                  membership_ttl=MEMBERSHIP_TTL, points_ttl=POINTS_TTL)
        credential = issuer.issue_claims(config.ctype.name, claims, holder_key=holder_key,
                                         valid_for=expires - now,
                                         status=token_status_claim(list_url, idx))
        exp = decode_unverified(credential.split("~", 1)[0]).payload.get("exp")
        expires = datetime.fromtimestamp(int(exp), UTC) if isinstance(exp, int) else expires
    else:
        vc = data_integrity.loyalty_credential(
            config.ctype, claims, issuer=brand.did, subject=member.did, valid_from=now,
            valid_until=expires, credential_id=f"urn:uuid:{cred_id}")
        vc["credentialStatus"] = bitstring_entries(list_url, idx)
        credential = data_integrity.issue(vc, signer=signer, cryptosuite=_cryptosuite(signer),
                                          verification_method=signer.key_id or "", created=now)
    row = IssuedCredential(id=cred_id, brand_id=brand.id, member_id=member.id,
                           credential_type=config.ctype.name, format=config.format,
                           status_list_id=shard.id, status_index=idx, issued_at=now,
                           expires_at=expires, holder_key_thumbprint=holder_key.thumbprint())
    session.add(row)
    session.flush()
    mark_superseded(session, new=row, now=now)
    return credential, row
