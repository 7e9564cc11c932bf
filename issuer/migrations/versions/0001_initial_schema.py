"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Hand-checked against issuer._models; tests/issuer/test_migrations.py fails if the
models and the migrated schema ever differ.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# SQLite only autoincrements an INTEGER PRIMARY KEY (the rowid alias).
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "brand",
        sa.Column("slug", sa.String(length=63), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("did", sa.String(length=512), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("did"),
    )
    op.create_index(op.f("ix_brand_slug"), "brand", ["slug"], unique=True)

    op.create_table(
        "api_key",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("brand_id", sa.String(length=36), nullable=False),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["brand_id"], ["brand.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_api_key_brand_id"), "api_key", ["brand_id"], unique=False)

    op.create_table(
        "brand_key",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("brand_id", sa.String(length=36), nullable=False),
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("alg", sa.String(length=16), nullable=False),
        sa.Column("public_jwk", sa.JSON(), nullable=False),
        sa.Column("sealed_private", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["brand_id"], ["brand.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("brand_id", "kid"),
    )
    op.create_index(op.f("ix_brand_key_brand_id"), "brand_key", ["brand_id"], unique=False)

    op.create_table(
        "enrolment_challenge",
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("brand_id", sa.String(length=36), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["brand_id"], ["brand.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("nonce"),
    )
    op.create_index(
        op.f("ix_enrolment_challenge_brand_id"), "enrolment_challenge", ["brand_id"], unique=False
    )

    op.create_table(
        "idempotency_record",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("brand_id", sa.String(length=36), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["brand_id"], ["brand.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("brand_id", "key"),
    )
    op.create_index(
        op.f("ix_idempotency_record_brand_id"), "idempotency_record", ["brand_id"], unique=False
    )

    op.create_table(
        "program",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("points_ladder", sa.JSON(), nullable=False),
        sa.Column("return_window_days", sa.Integer(), nullable=False),
        sa.Column("points_validity_days", sa.Integer(), nullable=True),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("brand_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["brand_id"], ["brand.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("brand_id", "name"),
    )
    op.create_index(op.f("ix_program_brand_id"), "program", ["brand_id"], unique=False)

    op.create_table(
        "tier",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("qualifying_points", sa.Integer(), nullable=False),
        sa.Column("qualification_period_days", sa.Integer(), nullable=False),
        sa.Column("grace_period_days", sa.Integer(), nullable=False),
        sa.Column("downgrade_policy", sa.String(length=16), nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("program_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(["program_id"], ["program.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("program_id", "name"),
        sa.UniqueConstraint("program_id", "rank"),
    )
    op.create_index(op.f("ix_tier_program_id"), "tier", ["program_id"], unique=False)

    op.create_table(
        "member",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("brand_id", sa.String(length=36), nullable=False),
        sa.Column("program_id", sa.String(length=36), nullable=False),
        sa.Column("did", sa.String(length=2048), nullable=False),
        sa.Column("membership_number", sa.String(length=32), nullable=False),
        sa.Column("tier_id", sa.String(length=36), nullable=True),
        sa.Column("tier_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("tier_valid_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["brand_id"], ["brand.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["program_id"], ["program.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["tier_id"], ["tier.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("program_id", "did"),
        sa.UniqueConstraint("program_id", "membership_number"),
    )
    op.create_index(op.f("ix_member_brand_id"), "member", ["brand_id"], unique=False)
    op.create_index(op.f("ix_member_program_id"), "member", ["program_id"], unique=False)
    op.create_index(op.f("ix_member_tier_id"), "member", ["tier_id"], unique=False)

    op.create_table(
        "point_hold",
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("reference", sa.String(length=200), nullable=True),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("brand_id", sa.String(length=36), nullable=False),
        sa.Column("member_id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("captured_points", sa.Integer(), nullable=True),
        sa.CheckConstraint("points > 0", name="ck_point_hold_points"),
        sa.ForeignKeyConstraint(["brand_id"], ["brand.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["member_id"], ["member.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_point_hold_brand_id"), "point_hold", ["brand_id"], unique=False)
    op.create_index(op.f("ix_point_hold_member_id"), "point_hold", ["member_id"], unique=False)

    op.create_table(
        "ledger_entry",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("qualifying_points", sa.Integer(), nullable=False),
        sa.Column("qualifying_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("operator", sa.String(length=200), nullable=True),
        sa.Column("reference", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("brand_id", sa.String(length=36), nullable=False),
        sa.Column("member_id", sa.String(length=36), nullable=False),
        sa.Column("reverses_id", BIG_ID, nullable=True),
        sa.Column("hold_id", sa.String(length=36), nullable=True),
        sa.ForeignKeyConstraint(["brand_id"], ["brand.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["hold_id"], ["point_hold.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["member_id"], ["member.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["reverses_id"], ["ledger_entry.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_ledger_entry_brand_id"), "ledger_entry", ["brand_id"], unique=False)
    op.create_index(op.f("ix_ledger_entry_hold_id"), "ledger_entry", ["hold_id"], unique=False)
    op.create_index(op.f("ix_ledger_entry_member_id"), "ledger_entry", ["member_id"], unique=False)
    op.create_index(
        op.f("ix_ledger_entry_reverses_id"), "ledger_entry", ["reverses_id"], unique=True
    )

    op.create_table(
        "point_lot",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("member_id", sa.String(length=36), nullable=False),
        sa.Column("entry_id", BIG_ID, nullable=False),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("remaining", sa.Integer(), nullable=False),
        sa.Column("available_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["entry_id"], ["ledger_entry.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["member_id"], ["member.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
        sa.CheckConstraint("remaining >= 0 AND remaining <= amount", name="ck_point_lot_remaining"),
    )
    op.create_index(op.f("ix_point_lot_entry_id"), "point_lot", ["entry_id"], unique=True)
    op.create_index(op.f("ix_point_lot_member_id"), "point_lot", ["member_id"], unique=False)

    op.create_table(
        "lot_allocation",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("entry_id", BIG_ID, nullable=False),
        sa.Column("lot_id", BIG_ID, nullable=False),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["entry_id"], ["ledger_entry.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["lot_id"], ["point_lot.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_lot_allocation_entry_id"), "lot_allocation", ["entry_id"], unique=False
    )
    op.create_index(op.f("ix_lot_allocation_lot_id"), "lot_allocation", ["lot_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_lot_allocation_lot_id"), table_name="lot_allocation")
    op.drop_index(op.f("ix_lot_allocation_entry_id"), table_name="lot_allocation")

    op.drop_table("lot_allocation")
    op.drop_index(op.f("ix_point_lot_member_id"), table_name="point_lot")
    op.drop_index(op.f("ix_point_lot_entry_id"), table_name="point_lot")

    op.drop_table("point_lot")
    op.drop_index(op.f("ix_ledger_entry_reverses_id"), table_name="ledger_entry")
    op.drop_index(op.f("ix_ledger_entry_member_id"), table_name="ledger_entry")
    op.drop_index(op.f("ix_ledger_entry_hold_id"), table_name="ledger_entry")
    op.drop_index(op.f("ix_ledger_entry_brand_id"), table_name="ledger_entry")

    op.drop_table("ledger_entry")
    op.drop_index(op.f("ix_point_hold_member_id"), table_name="point_hold")
    op.drop_index(op.f("ix_point_hold_brand_id"), table_name="point_hold")

    op.drop_table("point_hold")
    op.drop_index(op.f("ix_member_tier_id"), table_name="member")
    op.drop_index(op.f("ix_member_program_id"), table_name="member")
    op.drop_index(op.f("ix_member_brand_id"), table_name="member")

    op.drop_table("member")
    op.drop_index(op.f("ix_tier_program_id"), table_name="tier")

    op.drop_table("tier")
    op.drop_index(op.f("ix_program_brand_id"), table_name="program")

    op.drop_table("program")
    op.drop_index(op.f("ix_idempotency_record_brand_id"), table_name="idempotency_record")

    op.drop_table("idempotency_record")
    op.drop_index(op.f("ix_enrolment_challenge_brand_id"), table_name="enrolment_challenge")

    op.drop_table("enrolment_challenge")
    op.drop_index(op.f("ix_brand_key_brand_id"), table_name="brand_key")

    op.drop_table("brand_key")
    op.drop_index(op.f("ix_api_key_brand_id"), table_name="api_key")

    op.drop_table("api_key")
    op.drop_index(op.f("ix_brand_slug"), table_name="brand")

    op.drop_table("brand")
