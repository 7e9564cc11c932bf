"""Storage of the points transparency log, partners, redemptions and erasures.

Kept apart from :mod:`issuer._models` (same conventions, same metadata) so the
log and the redemption flow evolve on their own migration.

The log of a brand (RFC 9162 tree, :mod:`tessera.merkle`):

* :class:`PendingLeaf`: a leaf a ledger write recorded, not yet in the tree.
  The write inserts it in its own transaction and takes no log lock; the
  sequencer (:func:`issuer._translog.integrate`) moves pending leaves into
  the tree in ``seq`` order, in batches, one transaction each.
* :class:`TransparencyLog`: one row per brand, the *sequencer's* state. Its
  size and its ``frontier`` (the hashes of the complete subtrees along the
  right edge, largest first) are all an integration needs, and locking this
  row serialises the brand's integrations (never its ledger writes).
* :class:`LogNode`: every complete subtree hash, ``(level, index) -> hash``
  with level 0 the leaf hashes: written once, never changed, O(1) amortised
  rows per append (at most log2 n). A proof reads O(log n) of them by
  primary key, so proofs cost the same at 10M leaves as at 1K. No foreign
  key on purpose: it is the hot bulk table and its brand is the log's.
* :class:`LogLeafData`: the leaf's canonical JSON for the member it concerns
  (the public API never serves it to anyone else); erasure drops the text
  and keeps the hash in :class:`LogNode`, so every proof still verifies.
* :class:`TreeHead`: every signed tree head handed out, so any two can be
  proven consistent later.
* :class:`LogCosignature`: witnesses' cosignatures of the brand's C2SP
  checkpoints (:mod:`issuer._witnessing`).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel

from issuer._models import BigID, _fk, new_id, utcnow

__all__ = [
    "LogCosignature",
    "LogLeafData",
    "LogNode",
    "MemberErasure",
    "Partner",
    "PartnerKey",
    "PartnerKeyPublic",
    "PartnerPublic",
    "PendingLeaf",
    "Redemption",
    "RedemptionStatus",
    "SettlementLine",
    "TransparencyLog",
    "TreeHead",
]


class TransparencyLog(SQLModel, table=True):
    __tablename__ = "transparency_log"

    brand_id: str = Field(sa_column=Column(String(36), ForeignKey("brand.id", ondelete="RESTRICT"),
                                           primary_key=True))
    size: int = Field(default=0, sa_type=BigInteger)
    frontier: list[str] = Field(default_factory=list, sa_type=JSON)
    # HMAC key of member pseudonyms. It keeps public readers from linking a
    # pseudonym to a member id; whoever reads the database reads members too.
    pseudonym_secret: str = Field(max_length=64, repr=False)
    created_at: datetime = Field(default_factory=utcnow)


class LogNode(SQLModel, table=True):
    __tablename__ = "log_node"

    brand_id: str = Field(primary_key=True, max_length=36)
    level: int = Field(primary_key=True, sa_type=SmallInteger, ge=0, le=63)
    idx: int = Field(primary_key=True, sa_type=BigInteger)
    hash: bytes = Field(sa_type=LargeBinary(32))


class LogLeafData(SQLModel, table=True):
    __tablename__ = "log_leaf"
    __table_args__ = (Index("ix_log_leaf_member", "brand_id", "member", "idx"),)

    brand_id: str = Field(primary_key=True, max_length=36)
    idx: int = Field(primary_key=True, sa_type=BigInteger)
    entry_id: int = Field(sa_column=_fk("ledger_entry.id", unique=True, kind=BigID,
                                        index=False))
    member: str = Field(max_length=64)
    data: str | None = Field(default=None, sa_type=Text)


class PendingLeaf(SQLModel, table=True):
    """A leaf written by a ledger write and promised to the member, waiting for the sequencer."""

    __tablename__ = "log_pending"
    # No index by member: the queue is short (what arrived in the last half
    # second), and every index is one more write on the ledger's hot path.
    __table_args__ = (Index("ix_log_pending_brand", "brand_id", "seq"),)

    seq: int | None = Field(default=None, primary_key=True, sa_type=BigID)
    brand_id: str = Field(max_length=36)
    entry_id: int = Field(sa_column=_fk("ledger_entry.id", unique=True, kind=BigID,
                                        index=False))
    member: str = Field(max_length=64)
    data: str = Field(sa_type=Text)
    created_at: datetime


class TreeHead(SQLModel, table=True):
    __tablename__ = "log_tree_head"

    brand_id: str = Field(primary_key=True, max_length=36)
    tree_size: int = Field(primary_key=True, sa_type=BigInteger)
    root_hash: str = Field(max_length=64)
    signed_at: datetime
    jws: str = Field(sa_type=Text)


class LogCosignature(SQLModel, table=True):
    """A witness's ``cosignature/v1`` of the brand's checkpoint at ``tree_size``.

    ``line`` is the note signature line the witness returned (c2sp.org/tlog-witness),
    checked against its key before it is stored; the checkpoint text itself is
    re-made from the tree (Ed25519 is deterministic, so the log's signature too).
    """

    __tablename__ = "log_cosignature"

    brand_id: str = Field(primary_key=True, max_length=36)
    tree_size: int = Field(primary_key=True, sa_type=BigInteger)
    witness: str = Field(primary_key=True, max_length=255)
    line: str = Field(sa_type=Text)
    created_at: datetime = Field(default_factory=utcnow)


# -- partners and redemptions -------------------------------------------------------------


class Partner(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("brand_id", "name"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    brand_id: str = Field(sa_column=_fk("brand.id"))
    name: str = Field(max_length=200)
    # The OpenID4VP Client Identifier the partner's requests use: the
    # member's KB-JWT must be addressed to it.
    client_id: str = Field(max_length=2048)
    created_at: datetime = Field(default_factory=utcnow)


class PartnerKey(SQLModel, table=True):
    __tablename__ = "partner_key"

    id: str = Field(primary_key=True, max_length=32)
    partner_id: str = Field(sa_column=_fk("partner.id"))
    secret_sha256: str = Field(max_length=64, repr=False)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


class PartnerKeyPublic(SQLModel):
    id: str
    created_at: datetime
    revoked_at: datetime | None


class PartnerPublic(SQLModel):
    id: str
    name: str
    client_id: str
    created_at: datetime
    keys: list[PartnerKeyPublic]


class RedemptionStatus(StrEnum):
    HELD = "held"
    CAPTURED = "captured"
    RELEASED = "released"
    EXPIRED = "expired"    # shown only: HELD past its hold's expiry
    REFUNDED = "refunded"  # captured, then credited back in full


class Redemption(SQLModel, table=True):
    # The distinguishing column first: keyed (partner_id, ...), a lookup of one key could
    # be planned on the other's partner_id prefix without statistics, reading every
    # redemption of the partner (bench/README.md "Hot statements in O(1) without planner
    # statistics (session 7)"). SQLite keeps (partner_id, ...), as for Member.
    __table_args__ = (UniqueConstraint("order_reference", "partner_id"),
                      UniqueConstraint("nonce", "partner_id"),
                      CheckConstraint("points > 0", name="ck_redemption_points"),
                      CheckConstraint("refunded_points <= captured_points",
                                      name="ck_redemption_refund"))

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    brand_id: str = Field(sa_column=_fk("brand.id"))
    # No index on partner_id alone: it was a generic plan's pick for a unique key's lookup.
    partner_id: str = Field(sa_column=_fk("partner.id", index=False))
    member_id: str = Field(sa_column=_fk("member.id"))
    hold_id: str = Field(sa_column=_fk("point_hold.id", unique=True, index=False))
    order_reference: str = Field(max_length=200)
    points: int
    nonce: str = Field(max_length=255)
    transaction_hash: str = Field(max_length=64)
    # SHA-256 of the KB-JWT: the same presentation is accepted once.
    presentation_hash: str = Field(max_length=64, unique=True)
    credential_hash: str = Field(max_length=64, description="SHA-256 of the issuer JWT")
    status: str = Field(default=RedemptionStatus.HELD, max_length=16)
    captured_points: int = 0
    refunded_points: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    closed_at: datetime | None = None


class SettlementLine(SQLModel, table=True):
    """One ledger entry a partner is accountable for: what a statement lists."""

    __tablename__ = "settlement_line"
    __table_args__ = (Index("ix_settlement_line_period", "partner_id", "created_at"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=BigID)
    brand_id: str = Field(sa_column=_fk("brand.id"))
    partner_id: str = Field(sa_column=_fk("partner.id", index=False))
    kind: str = Field(max_length=16)  # redeem | refund | earn
    points: int
    entry_id: int = Field(sa_column=_fk("ledger_entry.id", unique=True, kind=BigID,
                                        index=False))
    redemption_id: str | None = Field(default=None,
                                      sa_column=_fk("redemption.id", nullable=True))
    reference: str = Field(max_length=200)
    created_at: datetime


class MemberErasure(SQLModel, table=True):
    __tablename__ = "member_erasure"

    member_id: str = Field(sa_column=Column(
        String(36), ForeignKey("member.id", ondelete="RESTRICT"), primary_key=True))
    brand_id: str = Field(sa_column=_fk("brand.id"))
    erased_at: datetime
    details: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
