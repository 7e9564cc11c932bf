"""pending leaves of the transparency log (the sequencer's queue)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

Hand-checked against issuer._log_models.PendingLeaf; tests/issuer/test_migrations.py
fails if the models and the migrated schema ever differ.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0005"
down_revision: str | None = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "log_pending",
        sa.Column("seq", BIG_ID, nullable=False),
        sa.Column("brand_id", sa.String(length=36), nullable=False),
        sa.Column("entry_id", BIG_ID, nullable=False),
        sa.Column("member", sa.String(length=64), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["entry_id"], ["ledger_entry.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("entry_id"),
    )
    op.create_index("ix_log_pending_brand", "log_pending", ["brand_id", "seq"])


def downgrade() -> None:
    # Pending leaves are ledger entries' only log record until integrated: run
    # `tessera issuer log integrate` first rather than lose them.
    left = op.get_bind().execute(sa.text("SELECT count(*) FROM log_pending")).scalar()
    if left:
        raise RuntimeError(f"{left} pending log leaves: run `tessera issuer log integrate` first")
    op.drop_table("log_pending")
