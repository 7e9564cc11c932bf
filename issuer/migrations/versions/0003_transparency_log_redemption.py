"""transparency log, partners, redemptions, settlement lines, erasures

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24

Hand-checked against issuer._log_models; tests/issuer/test_migrations.py fails if
the models and the migrated schema ever differ.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0003"
down_revision: str | None = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "transparency_log",
        sa.Column("brand_id", sa.String(length=36), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("frontier", sa.JSON(), nullable=False),
        sa.Column("pseudonym_secret", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["brand_id"], ["brand.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("brand_id"),
    )
    op.create_table(
        "log_node",
        sa.Column("brand_id", sa.String(length=36), nullable=False),
        sa.Column("level", sa.SmallInteger(), nullable=False),
        sa.Column("idx", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint("brand_id", "level", "idx"),
    )
    op.create_table(
        "log_leaf",
        sa.Column("brand_id", sa.String(length=36), nullable=False),
        sa.Column("idx", sa.BigInteger(), nullable=False),
        sa.Column("entry_id", BIG_ID, nullable=False),
        sa.Column("member", sa.String(length=64), nullable=False),
        sa.Column("data", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["entry_id"], ["ledger_entry.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("brand_id", "idx"),
        sa.UniqueConstraint("entry_id"),
    )
    op.create_index("ix_log_leaf_member", "log_leaf", ["brand_id", "member", "idx"])
    op.create_table(
        "log_tree_head",
        sa.Column("brand_id", sa.String(length=36), nullable=False),
        sa.Column("tree_size", sa.BigInteger(), nullable=False),
        sa.Column("root_hash", sa.String(length=64), nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("jws", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("brand_id", "tree_size"),
    )
    op.create_table(
        "partner",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("brand_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("client_id", sa.String(length=2048), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["brand_id"], ["brand.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("brand_id", "name"),
    )
    op.create_index(op.f("ix_partner_brand_id"), "partner", ["brand_id"])
    op.create_table(
        "partner_key",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("partner_id", sa.String(length=36), nullable=False),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["partner_id"], ["partner.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_partner_key_partner_id"), "partner_key", ["partner_id"])
    op.create_table(
        "redemption",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("brand_id", sa.String(length=36), nullable=False),
        sa.Column("partner_id", sa.String(length=36), nullable=False),
        sa.Column("member_id", sa.String(length=36), nullable=False),
        sa.Column("hold_id", sa.String(length=36), nullable=False),
        sa.Column("order_reference", sa.String(length=200), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("nonce", sa.String(length=255), nullable=False),
        sa.Column("transaction_hash", sa.String(length=64), nullable=False),
        sa.Column("presentation_hash", sa.String(length=64), nullable=False),
        sa.Column("credential_hash", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("captured_points", sa.Integer(), nullable=False),
        sa.Column("refunded_points", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("points > 0", name="ck_redemption_points"),
        sa.CheckConstraint("refunded_points <= captured_points", name="ck_redemption_refund"),
        sa.ForeignKeyConstraint(["brand_id"], ["brand.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["partner_id"], ["partner.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["member_id"], ["member.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["hold_id"], ["point_hold.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("hold_id"),
        sa.UniqueConstraint("partner_id", "order_reference"),
        sa.UniqueConstraint("partner_id", "nonce"),
        sa.UniqueConstraint("presentation_hash"),
    )
    op.create_index(op.f("ix_redemption_brand_id"), "redemption", ["brand_id"])
    op.create_index(op.f("ix_redemption_partner_id"), "redemption", ["partner_id"])
    op.create_index(op.f("ix_redemption_member_id"), "redemption", ["member_id"])
    op.create_table(
        "settlement_line",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("brand_id", sa.String(length=36), nullable=False),
        sa.Column("partner_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("entry_id", BIG_ID, nullable=False),
        sa.Column("redemption_id", sa.String(length=36), nullable=True),
        sa.Column("reference", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["brand_id"], ["brand.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["partner_id"], ["partner.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["entry_id"], ["ledger_entry.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["redemption_id"], ["redemption.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("entry_id"),
    )
    op.create_index(op.f("ix_settlement_line_brand_id"), "settlement_line", ["brand_id"])
    op.create_index(op.f("ix_settlement_line_redemption_id"), "settlement_line",
                    ["redemption_id"])
    op.create_index("ix_settlement_line_period", "settlement_line", ["partner_id", "created_at"])
    op.create_table(
        "member_erasure",
        sa.Column("member_id", sa.String(length=36), nullable=False),
        sa.Column("brand_id", sa.String(length=36), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["member_id"], ["member.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["brand_id"], ["brand.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("member_id"),
    )
    op.create_index(op.f("ix_member_erasure_brand_id"), "member_erasure", ["brand_id"])


def downgrade() -> None:
    for table in ("member_erasure", "settlement_line", "redemption", "partner_key", "partner",
                  "log_tree_head", "log_leaf", "log_node", "transparency_log"):
        op.drop_table(table)
