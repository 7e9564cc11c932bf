"""witness cosignatures of each brand's C2SP checkpoints

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29

Hand-checked against issuer._log_models.LogCosignature; tests/issuer/test_migrations.py
fails if the models and the migrated schema ever differ.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "log_cosignature",
        sa.Column("brand_id", sa.String(length=36), nullable=False),
        sa.Column("tree_size", sa.BigInteger(), nullable=False),
        sa.Column("witness", sa.String(length=255), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("brand_id", "tree_size", "witness"),
    )


def downgrade() -> None:
    op.drop_table("log_cosignature")
