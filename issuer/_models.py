"""Storage models of the issuer service.

One family per entity, as in the FastAPI full-stack template: ``*Base``
(shared fields), ``*Create`` (what a client may send), ``*Public`` (what the
API returns) and the ``table=True`` class. The schema itself is owned by the
Alembic migrations in :mod:`issuer.migrations`; a test checks that the two
never drift apart.

The points ledger is append-only: :class:`LedgerEntry` rows are never
updated or deleted. :class:`PointLot` (one per credit, with what is left of
it) and :class:`LotAllocation` (which debit took how much from which lot, a
negative amount restoring it) are the projection that makes first-in
first-out expiry and exact reversals cheap; ``lot.remaining == lot.amount -
sum(allocations)`` always holds.

Credentials: every issued credential is an :class:`IssuedCredential` row
holding its place (``status_list_id``, ``status_index``) in one of the
brand's :class:`StatusListShard` lists; the published lists are computed from
these rows, so a status change is one row update and a list can never
disagree with the table. :class:`CredentialOffer` rows back OpenID4VCI
pre-authorized offers (only hashes of the code, the reference and the
tx_code are stored).
"""

from __future__ import annotations

import itertools
import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import ConfigDict, Strict, ValidationInfo, field_validator
from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel

from tessera.credentials import DEFAULT_POINTS_LADDER
from tessera.encoding import json_integers
from tessera.nonces import define_nonce_table

__all__ = [
    "ApiKey",
    "ApiKeyCreated",
    "ApiKeyPublic",
    "Balance",
    "Brand",
    "BrandCreate",
    "BrandKey",
    "BrandKeyPublic",
    "BrandPublic",
    "CredentialOffer",
    "CredentialState",
    "DowngradePolicy",
    "EnrolmentChallenge",
    "EntryKind",
    "ExpiringNext",
    "HoldStatus",
    "IdempotencyRecord",
    "IssuedCredential",
    "IssuedCredentialPublic",
    "KeyStatus",
    "LedgerEntry",
    "LedgerEntryPublic",
    "LotAllocation",
    "Member",
    "MemberEnrol",
    "MemberPublic",
    "PointHold",
    "PointHoldPublic",
    "PointLot",
    "Program",
    "ProgramCreate",
    "ProgramPublic",
    "RefreshToken",
    "StatusListKind",
    "StatusListShard",
    "Tier",
    "TierCreate",
    "TierPublic",
    "new_id",
    "utcnow",
]

MAX_POINTS = 1_000_000_000
SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class _JsonBody(SQLModel):
    """A JSON request body: what its schema says or refused, as tessera.web.StrictBody
    (not imported: this module stays free of the web stack)."""

    # sqlmodel types model_config as a TypedDict of its own.
    model_config = ConfigDict(strict=True)  # type: ignore[assignment]

    @field_validator("*", mode="before")
    @classmethod
    def _json_integers(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name is None:
            return value
        return json_integers(cls.model_fields[info.field_name].annotation, value)


# SQLite only autoincrements an INTEGER PRIMARY KEY (the rowid alias).
BigID = BigInteger().with_variant(Integer(), "sqlite")


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


def _fk(target: str, *, nullable: bool = False, index: bool = True,
        unique: bool = False, kind: Any = None) -> Any:
    """A foreign-key column; ON DELETE RESTRICT because nothing in the ledger is ever deleted."""
    return Column(kind if kind is not None else String(36),
                  ForeignKey(target, ondelete="RESTRICT"),
                  nullable=nullable, index=index, unique=unique)


class DowngradePolicy(StrEnum):
    IMMEDIATE = "immediate"          # drop to the earned tier as soon as points fall short
    END_OF_GRACE = "end_of_grace"    # keep the tier until valid-until + grace, then drop
    ONE_STEP = "one_step"            # after the grace period, drop one rank at a time


class KeyStatus(StrEnum):
    ACTIVE = "active"     # signs new credentials, listed in the DID document
    RETIRED = "retired"   # no longer signs, still listed so earlier credentials verify


class EntryKind(StrEnum):
    EARN = "earn"
    REDEEM = "redeem"
    ADJUST = "adjust"
    EXPIRE = "expire"
    REVERSE = "reverse"
    # Zero-point entries that put holds in the log, so that the held figure is
    # derivable from it (tessera.pointslog.fold); capture is a ``redeem``.
    HOLD = "hold"
    RELEASE = "release"
    # Zero points: carries the lots and holds of a history that began before
    # leaves recorded them (tessera.pointslog "carry"); written once.
    SNAPSHOT = "snapshot"


class HoldStatus(StrEnum):
    HELD = "held"
    CAPTURED = "captured"
    RELEASED = "released"
    EXPIRED = "expired"  # shown only: a HELD hold past its expiry, which no longer reserves


# -- brands ------------------------------------------------------------------


class BrandBase(SQLModel):
    slug: str = Field(min_length=1, max_length=63, index=True, unique=True)
    name: str = Field(min_length=1, max_length=200)


class BrandCreate(BrandBase):
    @field_validator("slug")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG_RE.match(value):
            raise ValueError("slug must be lowercase letters, digits and inner hyphens")
        return value


class Brand(BrandBase, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    did: str = Field(max_length=512, unique=True)
    created_at: datetime = Field(default_factory=utcnow)


class BrandPublic(BrandBase):
    id: str
    did: str
    created_at: datetime


class BrandKey(SQLModel, table=True):
    __tablename__ = "brand_key"
    __table_args__ = (UniqueConstraint("brand_id", "kid"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    brand_id: str = Field(sa_column=_fk("brand.id"))
    kid: str = Field(max_length=64)
    alg: str = Field(max_length=16)
    public_jwk: dict[str, Any] = Field(sa_type=JSON)
    # AES-256-GCM box from tessera.keys.seal; the AAD binds it to brand and kid.
    sealed_private: dict[str, Any] = Field(sa_type=JSON, repr=False)
    status: str = Field(default=KeyStatus.ACTIVE, max_length=16)
    created_at: datetime = Field(default_factory=utcnow)
    retired_at: datetime | None = None


class BrandKeyPublic(SQLModel):
    kid: str
    verification_method: str
    alg: str
    public_jwk: dict[str, Any]
    status: str
    created_at: datetime
    retired_at: datetime | None


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_key"

    id: str = Field(primary_key=True, max_length=32)  # public half of the token
    brand_id: str = Field(sa_column=_fk("brand.id"))
    secret_sha256: str = Field(max_length=64, repr=False)
    label: str = Field(default="", max_length=200)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


class ApiKeyPublic(SQLModel):
    id: str
    label: str
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyPublic):
    token: str = Field(description="shown once; only its hash is stored")


# -- programs and tiers ------------------------------------------------------------


class TierBase(SQLModel):
    # The pattern is checked by _name; it is stated here so the OpenAPI document says it.
    name: str = Field(min_length=1, max_length=64,
                      schema_extra={"pattern": "^[a-z][a-z0-9_]*$"})
    rank: int = Field(ge=0, le=1000)
    qualifying_points: int = Field(ge=0, le=MAX_POINTS)
    qualification_period_days: int = Field(default=365, ge=1, le=3660)
    grace_period_days: int = Field(default=0, ge=0, le=3660)
    downgrade_policy: DowngradePolicy = Field(default=DowngradePolicy.END_OF_GRACE,
                                              sa_type=String(16))

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        # Tier names become claim names (tier_at_least_<name>).
        if not re.fullmatch(r"[a-z][a-z0-9_]*", value):
            raise ValueError("tier name must be lowercase letters, digits and underscores")
        return value


class TierCreate(TierBase, _JsonBody):
    # A JSON string; strict mode would want a DowngradePolicy instance (tessera.web.STRICT_BODY).
    downgrade_policy: Annotated[DowngradePolicy, Strict(False)] = Field(
        default=DowngradePolicy.END_OF_GRACE)


class Tier(TierBase, table=True):
    __table_args__ = (UniqueConstraint("program_id", "rank"),
                      UniqueConstraint("program_id", "name"))

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    program_id: str = Field(sa_column=_fk("program.id"))


class TierPublic(TierBase):
    id: str


class ProgramBase(SQLModel):
    name: str = Field(min_length=1, max_length=200)
    points_ladder: list[int] = Field(default_factory=lambda: list(DEFAULT_POINTS_LADDER),
                                     sa_type=JSON)
    return_window_days: int = Field(default=0, ge=0, le=365,
                                    description="earned points stay pending this long")
    points_validity_days: int | None = Field(default=None, ge=1, le=36600,
                                             description="a lot expires this long after it "
                                                         "was earned; null: never")


class ProgramCreate(ProgramBase, _JsonBody):
    tiers: list[TierCreate] = Field(default_factory=list, max_length=32)

    @field_validator("points_ladder")
    @classmethod
    def _ladder(cls, value: list[int]) -> list[int]:
        if len(value) > 64 or any(v <= 0 or v > MAX_POINTS for v in value):
            raise ValueError("ladder: at most 64 positive steps")
        if value != sorted(set(value)):
            raise ValueError("ladder must be strictly increasing")
        return value

    @field_validator("tiers")
    @classmethod
    def _tiers(cls, value: list[TierCreate]) -> list[TierCreate]:
        ranks = [t.rank for t in value]
        if len(set(ranks)) != len(ranks) or len({t.name for t in value}) != len(value):
            raise ValueError("tier names and ranks must be unique")
        ordered = sorted(value, key=lambda t: t.rank)
        if any(a.qualifying_points >= b.qualifying_points
               for a, b in itertools.pairwise(ordered)):
            raise ValueError("a higher rank must need more qualifying points")
        return ordered


class Program(ProgramBase, table=True):
    __table_args__ = (UniqueConstraint("brand_id", "name"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    brand_id: str = Field(sa_column=_fk("brand.id"))
    created_at: datetime = Field(default_factory=utcnow)


class ProgramPublic(ProgramBase):
    id: str
    created_at: datetime
    tiers: list[TierPublic]


# -- members -----------------------------------------------------------------------


class MemberEnrol(_JsonBody):
    program_id: str = Field(max_length=36)
    did: str = Field(min_length=8, max_length=2048)
    proof: str = Field(max_length=16384, description=(
        "compact JWS, typ tessera-enrolment+jwt, signed by one of the DID's authentication "
        "keys (kid = its DID URL), payload {iss: did, aud: brand DID, nonce: challenge, iat}"))


class Member(SQLModel, table=True):
    # No index leads with brand_id or program_id: the lock of a member by id and brand
    # then has only its primary key to use, and one by program and number only the
    # unique key that pins both (a planner without statistics picked an index on brand_id,
    # or the other unique key's program_id prefix, and read every member of the brand or
    # program; bench/README.md "Hot statements in O(1) without planner statistics
    # (session 7)"). SQLite keeps these keys as (program_id, ...): its planner prefers the
    # key all of whose columns a lookup pins, and changing them there rebuilds the table.
    __table_args__ = (UniqueConstraint("did", "program_id"),
                      UniqueConstraint("membership_number", "program_id"))

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    brand_id: str = Field(sa_column=_fk("brand.id", index=False))
    program_id: str = Field(sa_column=_fk("program.id", index=False))
    did: str = Field(max_length=2048)
    membership_number: str = Field(max_length=32)
    tier_id: str | None = Field(default=None, sa_column=_fk("tier.id", nullable=True))
    tier_since: datetime | None = None
    tier_valid_until: datetime | None = None
    enrolled_at: datetime = Field(default_factory=utcnow)


class MemberPublic(SQLModel):
    id: str
    program_id: str
    did: str
    membership_number: str
    tier: str | None
    tier_rank: int | None
    tier_since: datetime | None
    tier_valid_until: datetime | None
    enrolled_at: datetime


class EnrolmentChallenge(SQLModel, table=True):
    __tablename__ = "enrolment_challenge"

    nonce: str = Field(primary_key=True, max_length=64)
    brand_id: str = Field(sa_column=_fk("brand.id"))
    expires_at: datetime
    used_at: datetime | None = None


# -- ledger -------------------------------------------------------------------------


class LedgerEntryBase(SQLModel):
    kind: EntryKind = Field(sa_type=String(16))
    points: int = Field(description="change of the redeemable (and pending) balance")
    qualifying_points: int = Field(description="change of the qualifying (tier) balance")
    qualifying_at: datetime = Field(description="the date the qualifying change counts for")
    reason: str | None = Field(default=None, max_length=500)
    operator: str | None = Field(default=None, max_length=200)
    reference: str | None = Field(default=None, max_length=200)
    created_at: datetime = Field(default_factory=utcnow)


class LedgerEntry(LedgerEntryBase, table=True):
    __tablename__ = "ledger_entry"
    # A member's qualifying sums read the window's entries with qualifying points only
    # (member_id alone read every entry the member ever had; a redemption's hold and
    # redeem entries carry none). Their statements say ``qualifying_points != 0`` as a
    # constant, which is how a planner knows the partial index answers them.
    __table_args__ = (Index("ix_ledger_entry_member", "member_id", "id"),
                      Index("ix_ledger_entry_member_qualifying", "member_id", "qualifying_at",
                            postgresql_where=text("qualifying_points <> 0"),
                            sqlite_where=text("qualifying_points <> 0")))

    id: int | None = Field(default=None, primary_key=True, sa_type=BigID)
    # No index on brand_id: a member's entries (member_id and brand_id) could be planned
    # on it, every entry of the brand; the one reader by brand alone is check_log's audit.
    brand_id: str = Field(sa_column=_fk("brand.id", index=False))
    member_id: str = Field(sa_column=_fk("member.id", index=False))
    # Unique: an entry is reversed at most once.
    reverses_id: int | None = Field(
        default=None,
        sa_column=_fk("ledger_entry.id", nullable=True, unique=True, kind=BigID),
    )
    hold_id: str | None = Field(default=None,
                                sa_column=_fk("point_hold.id", nullable=True))


class LedgerEntryPublic(LedgerEntryBase):
    id: int
    member_id: str
    reverses_id: int | None
    hold_id: str | None


class PointLot(SQLModel, table=True):
    __tablename__ = "point_lot"
    # The last line of defence against a negative balance, below the ledger's checks.
    # The member's live lots (remaining > 0) are read without the drained ones.
    __table_args__ = (CheckConstraint("remaining >= 0 AND remaining <= amount",
                                      name="ck_point_lot_remaining"),
                      Index("ix_point_lot_member_remaining", "member_id", "remaining"))

    id: int | None = Field(default=None, primary_key=True, sa_type=BigID)
    member_id: str = Field(sa_column=_fk("member.id", index=False))
    entry_id: int = Field(sa_column=_fk("ledger_entry.id", unique=True, kind=BigID))
    amount: int
    remaining: int
    available_at: datetime
    expires_at: datetime | None = None


class LotAllocation(SQLModel, table=True):
    __tablename__ = "lot_allocation"

    id: int | None = Field(default=None, primary_key=True, sa_type=BigID)
    entry_id: int = Field(sa_column=_fk("ledger_entry.id", kind=BigID))
    lot_id: int = Field(sa_column=_fk("point_lot.id", kind=BigID))
    amount: int


class PointHoldBase(SQLModel):
    points: int = Field(gt=0, le=MAX_POINTS)
    reference: str | None = Field(default=None, max_length=200)


class PointHold(PointHoldBase, table=True):
    __tablename__ = "point_hold"
    # The member's open holds (held, unexpired) are read without the closed ones.
    __table_args__ = (CheckConstraint("points > 0", name="ck_point_hold_points"),
                      Index("ix_point_hold_member_open", "member_id", "status", "expires_at"))

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    brand_id: str = Field(sa_column=_fk("brand.id"))
    member_id: str = Field(sa_column=_fk("member.id", index=False))
    status: HoldStatus = Field(default=HoldStatus.HELD, sa_type=String(16))
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    closed_at: datetime | None = None
    captured_points: int | None = None


class PointHoldPublic(PointHoldBase):
    id: str
    member_id: str
    status: HoldStatus
    created_at: datetime
    expires_at: datetime
    closed_at: datetime | None
    captured_points: int | None


class IdempotencyRecord(SQLModel, table=True):
    __tablename__ = "idempotency_record"
    # The unique key is the only index: an index on brand_id alone (its prefix) was picked
    # by generic plans and read every record of the brand per lookup.
    __table_args__ = (UniqueConstraint("brand_id", "key"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=BigID)
    brand_id: str = Field(sa_column=_fk("brand.id", index=False))
    key: str = Field(max_length=255)
    fingerprint: str = Field(max_length=64)
    status_code: int
    response: dict[str, Any] = Field(sa_type=JSON)
    created_at: datetime = Field(default_factory=utcnow)


# -- read models -----------------------------------------------------------------------


class ExpiringNext(SQLModel):
    points: int
    at: datetime


class Balance(SQLModel):
    member_id: str
    available: int = Field(description="redeemable now (matured, unexpired, not held)")
    pending: int = Field(description="earned, still inside the return window")
    held: int = Field(description="reserved by open holds")
    qualifying: int = Field(description="qualifying points in the current window")
    tier: str | None
    expiring_next: ExpiringNext | None
    as_of: datetime


# -- credentials, status lists and offers ------------------------------------------------


class CredentialState(StrEnum):
    VALID = "valid"
    REVOKED = "revoked"      # final: a revoked credential is never valid again
    SUSPENDED = "suspended"  # reversible with resume


class StatusListKind(StrEnum):
    TOKEN = "token"  # noqa: S105 - IETF Token Status List, 2 bits: valid / invalid / suspended
    BITSTRING = "bitstring"  # W3C Bitstring Status List: a revocation and a suspension list


class StatusListShard(SQLModel, table=True):
    """One status list of a brand: ``size`` entries, published at a stable URL."""

    __tablename__ = "status_list"
    __table_args__ = (Index("ix_status_list_open", "brand_id", "kind", "full"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    brand_id: str = Field(sa_column=_fk("brand.id", index=False))  # ix_status_list_open
    kind: StatusListKind = Field(sa_type=String(16))
    size: int
    # Set once random allocation cannot find a free slot; a new shard opens.
    full: bool = False
    # Bumped on every status change of an entry: the published list's cache key.
    version: int = 0
    created_at: datetime = Field(default_factory=utcnow)


class IssuedCredential(SQLModel, table=True):
    __tablename__ = "issued_credential"
    # No index on brand_id: a credential's status entry is found by its unique key (a
    # brand_id index was picked instead and read every credential of the brand). The
    # member's credentials of a type that nothing superseded (its current pool, and those
    # revoked since it was issued) are read without the history; a new batch reads only
    # those of them it supersedes (of another dataset, or revoked), not the pool of its
    # own dataset (issuer._status_lists.mark_superseded; migration 0008).
    __table_args__ = (UniqueConstraint("status_list_id", "status_index"),
                      Index("ix_issued_credential_member_current",
                            "member_id", "credential_type", "superseded_by", "format",
                            "dataset_sha256", "status"))

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    brand_id: str = Field(sa_column=_fk("brand.id", index=False))
    member_id: str = Field(sa_column=_fk("member.id", index=False))
    credential_type: str = Field(max_length=64)
    format: str = Field(max_length=16)
    status_list_id: str = Field(sa_column=_fk("status_list.id", index=False))
    status_index: int
    status: CredentialState = Field(default=CredentialState.VALID, sa_type=String(16))
    status_reason: str | None = Field(default=None, max_length=200)
    superseded_by: str | None = Field(
        default=None, sa_column=_fk("issued_credential.id", nullable=True, index=False))
    holder_key_thumbprint: str | None = Field(default=None, max_length=64)
    issued_at: datetime
    expires_at: datetime | None = None
    status_changed_at: datetime | None = None
    # OpenID4VCI 1.0 batch issuance: the credentials of one Credential Response
    # share a batch id (never published) and the digest of their Credential
    # Dataset (claims without ``as_of``), which tells supersession a top-up
    # with unchanged claims from a change of state.
    batch_id: str | None = Field(default=None, max_length=36, index=True)
    dataset_sha256: str | None = Field(default=None, max_length=64)


class IssuedCredentialPublic(SQLModel):
    id: str
    member_id: str
    credential_type: str
    format: str
    status_list_id: str
    status_index: int
    status: CredentialState
    status_reason: str | None
    superseded_by: str | None
    batch_id: str | None
    issued_at: datetime
    expires_at: datetime | None
    status_changed_at: datetime | None


class CredentialOffer(SQLModel, table=True):
    """An OpenID4VCI pre-authorized offer (§4.1) for one enrolled member.

    The pre-authorized code and the by-reference token are derived from a
    random secret that is never stored; only SHA-256 hashes are. The tx_code
    is stored as an HMAC under a key derived from the master key, so a copy
    of the database alone does not let one try the few possible PINs.
    """

    __tablename__ = "credential_offer"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    brand_id: str = Field(sa_column=_fk("brand.id"))
    member_id: str = Field(sa_column=_fk("member.id"))
    configuration_ids: list[str] = Field(sa_type=JSON)
    reference_sha256: str = Field(max_length=64, unique=True)
    code_sha256: str = Field(max_length=64, unique=True)
    tx_code_mac: str | None = Field(default=None, max_length=64, repr=False)
    tx_code_input_mode: str | None = Field(default=None, max_length=16)
    tx_code_length: int | None = None
    tx_code_description: str | None = Field(default=None, max_length=300)
    tx_code_failures: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    redeemed_at: datetime | None = None
    access_token_sha256: str | None = Field(default=None, max_length=64, unique=True)
    access_token_expires_at: datetime | None = None
    issued_configurations: list[str] = Field(default_factory=list, sa_type=JSON)
    # The refresh token family of this offer (RFC 6749 §6, rotated on each
    # use): it ends at this time whatever the rotations, or when revoked.
    refresh_family_expires_at: datetime | None = None
    refresh_revoked_at: datetime | None = None


class RefreshToken(SQLModel, table=True):
    """One refresh token of an offer's family; only its SHA-256 is stored.

    A token is used once: its use (``used_at``) issues the next one. Showing a
    used token again means two parties hold the family, so the whole family
    (the offer's refresh grant and its current access token) is revoked
    (OAuth 2.0 Security BCP, RFC 9700 §4.14.2).
    """

    __tablename__ = "refresh_token"

    token_sha256: str = Field(primary_key=True, max_length=64)
    offer_id: str = Field(sa_column=_fk("credential_offer.id"))
    issued_at: datetime
    expires_at: datetime
    used_at: datetime | None = None


# The OpenID4VCI c_nonce store (tessera.nonces.SqlNonceStore) lives in the
# same database and is created by the same migrations.
nonce_table = define_nonce_table(SQLModel.metadata)
