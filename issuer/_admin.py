"""Brands, API keys, programs and members: the data functions behind the admin API and CLI.

Every function takes the session first and everything else by keyword, and
every lookup that starts from a client-supplied id is filtered by the
caller's brand: another brand's program or member is simply ``not_found``
(its existence is not revealed either).
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any, Final

import sqlalchemy
from sqlalchemy import Select, bindparam, update
from sqlalchemy.engine import Engine, Row
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, col, select

from issuer._cache import cached, peek
from issuer._db import core, table_of
from issuer._keystore import KeyStore, did_document
from issuer._log_models import PartnerKey
from issuer._models import (
    ApiKey,
    ApiKeyCreated,
    ApiKeyPublic,
    Brand,
    BrandCreate,
    EnrolmentChallenge,
    Member,
    MemberEnrol,
    MemberPublic,
    Program,
    ProgramCreate,
    ProgramPublic,
    Tier,
    TierPublic,
)
from tessera.did import Resolver
from tessera.encoding import b64url_encode
from tessera.errors import ErrorCode, TesseraError
from tessera.jose import decode_unverified, verify_compact
from tessera.keys import new_secret_token, secret_token_row

__all__ = [
    "ENROLMENT_TYP",
    "authenticate",
    "brand_by_slug",
    "brand_did_document",
    "create_api_key",
    "create_brand",
    "create_program",
    "enrol_member",
    "get_member",
    "get_program",
    "list_api_keys",
    "list_programs",
    "lookup_brand",
    "member_public",
    "new_enrolment_challenge",
    "program_public",
    "revoke_api_key",
    "tiers_of",
]

TOKEN_PREFIX: Final = "tsk_"  # noqa: S105 - a prefix, not a secret
ENROLMENT_TYP: Final = "tessera-enrolment+jwt"
# How far a proof's iat may be from our clock: wallets' clocks drift.
IAT_LEEWAY: Final = timedelta(minutes=5)


# -- brands and API keys ------------------------------------------------------------------


def create_brand(session: Session, *, keystore: KeyStore, data: BrandCreate, did: str,
                 alg: str = "EdDSA") -> tuple[Brand, ApiKeyCreated]:
    """A brand with its first signing key and its first API key."""
    if session.exec(select(Brand).where(Brand.slug == data.slug)).first() is not None:
        raise TesseraError(ErrorCode.CONFLICT, f"brand {data.slug!r} already exists")
    brand = Brand(slug=data.slug, name=data.name, did=did)
    session.add(brand)
    session.flush()
    keystore.generate(session, brand_id=brand.id, did=did, alg=alg)
    return brand, create_api_key(session, brand_id=brand.id, label="initial")


def create_api_key(session: Session, *, brand_id: str, label: str = "") -> ApiKeyCreated:
    key_id, token, secret_sha256 = new_secret_token(TOKEN_PREFIX)
    row = ApiKey(id=key_id, brand_id=brand_id, secret_sha256=secret_sha256, label=label[:200])
    session.add(row)
    session.flush()
    return ApiKeyCreated(id=row.id, label=row.label, created_at=row.created_at,
                         revoked_at=None, token=token)


# Every authenticated request reads its key: built once, read as a plain row (no ORM
# object; callers need the key's owner, not the row: issuer._db.core).
_KEY_ROWS: Final[dict[type[SQLModel], Select[Any]]] = {
    model: sqlalchemy.select(table_of(model)).where(table_of(model).c.id == bindparam("id"))
    for model in (ApiKey, PartnerKey)}


def check_secret_token(session: Session, *, model: type[ApiKey] | type[PartnerKey],
                       prefix: str, token: str, refused: TesseraError) -> Row[Any]:
    """The unrevoked key row a ``<prefix><id>_<secret>`` token names (its columns), or
    raise ``refused``."""

    def lookup(key_id: str) -> Row[Any] | None:
        row = core(session, _KEY_ROWS[model], {"id": key_id}).first()
        return row if row is not None and row.revoked_at is None else None

    return secret_token_row(token, prefix=prefix, lookup=lookup,
                            stored_hash=lambda row: row.secret_sha256, refused=refused)


def authenticate(session: Session, *, token: str) -> Brand:
    """The brand an API key belongs to, or ``unauthorized``."""
    refused = TesseraError(ErrorCode.UNAUTHORIZED, "missing or invalid API key")
    row = check_secret_token(session, model=ApiKey, prefix=TOKEN_PREFIX, token=token,
                             refused=refused)
    brand = session.get(Brand, row.brand_id)
    if brand is None:
        raise refused
    return brand


def list_api_keys(session: Session, *, brand_id: str) -> list[ApiKeyPublic]:
    """The brand's keys, revoked ones included; never their hashes."""
    stmt = (select(ApiKey).where(ApiKey.brand_id == brand_id)
            .order_by(col(ApiKey.created_at), col(ApiKey.id)))
    return [ApiKeyPublic.model_validate(k, from_attributes=True) for k in session.exec(stmt)]


def revoke_api_key(session: Session, *, brand_id: str, key_id: str,
                   now: datetime) -> ApiKeyPublic:
    """Revoke one of the brand's keys; it is refused from the next request on.

    Revoking a revoked key returns it unchanged. The brand's last active key
    is never revoked (``conflict``): that would lock the brand out of its own
    admin API, including the call that made the request. Create another key
    first.
    """
    # Lock the brand row: two concurrent revocations of the last two keys
    # must not both see the other still active.
    locked = session.exec(select(Brand).where(Brand.id == brand_id).with_for_update()).first()
    row = session.get(ApiKey, key_id, populate_existing=True) if len(key_id) <= 32 else None
    if locked is None or row is None or row.brand_id != brand_id:
        raise TesseraError(ErrorCode.NOT_FOUND, "no such API key")
    if row.revoked_at is None:
        others = session.exec(select(ApiKey).where(
            ApiKey.brand_id == brand_id, ApiKey.id != key_id,
            col(ApiKey.revoked_at).is_(None))).first()
        if others is None:
            raise TesseraError(ErrorCode.CONFLICT,
                               "this is the brand's last active API key; create another first")
        row.revoked_at = now
        session.add(row)
        session.flush()
    return ApiKeyPublic.model_validate(row, from_attributes=True)


def brand_by_slug(session: Session, *, slug: str) -> Brand:
    """The brand named ``slug``; a brand never changes, so each worker reads it once
    (:mod:`issuer._cache`): the returned row is shared, read it, do not add it to a session."""
    brand = cached(session, ("brand", slug),
                   lambda: session.exec(select(Brand).where(Brand.slug == slug)).first())
    if brand is None:
        raise TesseraError(ErrorCode.NOT_FOUND, "no such brand")
    return brand


def lookup_brand(engine: Engine, *, slug: str) -> Brand:
    """:func:`brand_by_slug` outside any transaction: from the cache without touching the
    database, or from one read scope (whose commit caches it)."""
    from issuer._db import read_scope

    hit = peek(engine, ("brand", slug))
    if isinstance(hit, Brand):
        return hit
    with read_scope(engine) as session:
        return brand_by_slug(session, slug=slug)


def brand_did_document(session: Session, *, keystore: KeyStore, brand: Brand) -> dict[str, Any]:
    """The brand's did:web document, with its points log's C2SP parameters as a service."""
    from issuer._witnessing import log_service
    from tessera.pointslog import log_origin

    keys = keystore.public_keys(session, brand_id=brand.id, did=brand.did)
    document = did_document(brand.did, keys)
    if any(k.alg == "EdDSA" for k in keys):
        document["service"] = [log_service(brand.did, keys, f"https://{log_origin(brand.did)}")]
    return document


# -- programs --------------------------------------------------------------------------------


def tiers_of(session: Session, *, program_id: str) -> list[Tier]:
    """The program's tiers by rank; tiers are created with their program and never change,
    so each worker reads them once (:mod:`issuer._cache`; shared rows, read only)."""
    tiers = cached(session, ("tiers", program_id), lambda: list(session.exec(
        _TIERS, params={"program_id": program_id})) or None)
    return list(tiers or [])


# Built once: a statement built per call cost more than the cache lookup it precedes.
_TIERS: Final = (select(Tier).where(col(Tier.program_id) == bindparam("program_id"))
                 .order_by(col(Tier.rank)))


def program_public(session: Session, program: Program) -> ProgramPublic:
    tiers = [TierPublic.model_validate(t, from_attributes=True)
             for t in tiers_of(session, program_id=program.id)]
    return ProgramPublic(id=program.id, name=program.name, points_ladder=program.points_ladder,
                         return_window_days=program.return_window_days,
                         points_validity_days=program.points_validity_days,
                         created_at=program.created_at, tiers=tiers)


def create_program(session: Session, *, brand_id: str, data: ProgramCreate) -> ProgramPublic:
    exists = select(Program).where(Program.brand_id == brand_id, Program.name == data.name)
    if session.exec(exists).first() is not None:
        raise TesseraError(ErrorCode.CONFLICT, f"program {data.name!r} already exists")
    program = Program(brand_id=brand_id, name=data.name, points_ladder=list(data.points_ladder),
                      return_window_days=data.return_window_days,
                      points_validity_days=data.points_validity_days)
    session.add(program)
    session.flush()
    for tier in data.tiers:
        session.add(Tier(program_id=program.id, **tier.model_dump()))
    session.flush()
    return program_public(session, program)


def get_program(session: Session, *, brand_id: str, program_id: str) -> Program:
    program = session.get(Program, program_id)
    if program is None or program.brand_id != brand_id:
        raise TesseraError(ErrorCode.NOT_FOUND, "no such program")
    return program


def list_programs(session: Session, *, brand_id: str) -> list[ProgramPublic]:
    stmt = select(Program).where(Program.brand_id == brand_id).order_by(col(Program.created_at))
    return [program_public(session, p) for p in session.exec(stmt)]


# -- members ----------------------------------------------------------------------------------


def new_enrolment_challenge(session: Session, *, brand: Brand, now: datetime,
                            ttl_seconds: int = 300) -> dict[str, Any]:
    nonce = b64url_encode(secrets.token_bytes(24))
    expires = now + timedelta(seconds=ttl_seconds)
    session.add(EnrolmentChallenge(nonce=nonce, brand_id=brand.id, expires_at=expires))
    session.flush()
    return {"nonce": nonce, "audience": brand.did, "typ": ENROLMENT_TYP, "expires_at": expires}


def _verify_enrolment_proof(session: Session, *, brand: Brand, did: str, proof: str,
                            resolver: Resolver, now: datetime) -> None:
    """The member proves control of ``did``: a JWS by one of its authentication keys
    over our single-use challenge, addressed to this brand."""
    header = decode_unverified(proof).header
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid.startswith(did + "#"):
        raise TesseraError(ErrorCode.KEY_NOT_FOUND, "proof kid must be a key of the DID")
    key = resolver.key(kid, relationship="authentication")
    payload = verify_compact(proof, key, typ=ENROLMENT_TYP).payload
    if payload.get("iss") != did:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "proof iss is not the DID")
    if payload.get("aud") != brand.did:
        raise TesseraError(ErrorCode.AUDIENCE_MISMATCH, "proof is not addressed to this brand")
    iat = payload.get("iat")
    if not isinstance(iat, int) or isinstance(iat, bool):
        raise TesseraError(ErrorCode.MALFORMED, "proof iat must be an integer")
    if abs(now.timestamp() - iat) > IAT_LEEWAY.total_seconds():
        raise TesseraError(ErrorCode.EXPIRED, "proof iat is too far from now")
    nonce = payload.get("nonce")
    if not isinstance(nonce, str) or len(nonce) > 64:
        raise TesseraError(ErrorCode.NONCE_MISMATCH, "proof has no valid nonce")
    # One conditional UPDATE: two concurrent uses of a challenge cannot both succeed.
    result = session.execute(
        update(EnrolmentChallenge)
        .where(col(EnrolmentChallenge.nonce) == nonce,
               col(EnrolmentChallenge.brand_id) == brand.id,
               col(EnrolmentChallenge.used_at).is_(None),
               col(EnrolmentChallenge.expires_at) > now)
        .values(used_at=now)
    )
    if getattr(result, "rowcount", 0) != 1:
        row = session.get(EnrolmentChallenge, nonce)
        if row is not None and row.brand_id == brand.id and row.used_at is not None:
            raise TesseraError(ErrorCode.REPLAYED, "challenge already used")
        if row is not None and row.brand_id == brand.id:
            raise TesseraError(ErrorCode.EXPIRED, "challenge expired")
        raise TesseraError(ErrorCode.NONCE_MISMATCH, "unknown challenge")


def enrol_member(session: Session, *, brand: Brand, data: MemberEnrol, resolver: Resolver,
                 now: datetime) -> Member:
    program = get_program(session, brand_id=brand.id, program_id=data.program_id)
    _verify_enrolment_proof(session, brand=brand, did=data.did, proof=data.proof,
                            resolver=resolver, now=now)
    dup = select(Member).where(Member.program_id == program.id, Member.did == data.did)
    if session.exec(dup).first() is not None:
        raise TesseraError(ErrorCode.CONFLICT, "this DID is already a member of the program")
    base = [t for t in tiers_of(session, program_id=program.id) if t.qualifying_points == 0]
    for _ in range(5):
        number = f"{secrets.randbelow(10**10):010d}"
        taken = select(Member).where(Member.program_id == program.id,
                                     Member.membership_number == number)
        if session.exec(taken).first() is None:
            break
    else:  # pragma: no cover - 1e10 numbers
        raise TesseraError(ErrorCode.CONFLICT, "could not allocate a membership number")
    member = Member(brand_id=brand.id, program_id=program.id, did=data.did,
                    membership_number=number, enrolled_at=now,
                    tier_id=base[0].id if base else None, tier_since=now if base else None)
    session.add(member)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent enrolment of the same DID
        raise TesseraError(ErrorCode.CONFLICT, "this DID is already a member") from exc
    return member


def get_member(session: Session, *, brand_id: str, member_id: str) -> Member:
    member = session.get(Member, member_id)
    if member is None or member.brand_id != brand_id:
        raise TesseraError(ErrorCode.NOT_FOUND, "no such member")
    return member


def member_public(session: Session, member: Member) -> MemberPublic:
    tier = session.get(Tier, member.tier_id) if member.tier_id else None
    return MemberPublic(id=member.id, program_id=member.program_id, did=member.did,
                        membership_number=member.membership_number,
                        tier=tier.name if tier else None, tier_rank=tier.rank if tier else None,
                        tier_since=member.tier_since, tier_valid_until=member.tier_valid_until,
                        enrolled_at=member.enrolled_at)
