"""OpenID4VCI batch issuance and refresh tokens

issued_credential gains batch_id (the credentials of one Credential Response)
and dataset_sha256 (the digest of their claims, so a top-up with unchanged
claims does not supersede the unused rest of the pool); credential_offer gains
the refresh token family's end and revocation; refresh_token holds the hashes
of the family's rotated tokens.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29

Hand-checked against issuer._models; tests/issuer/test_migrations.py fails if
the models and the migrated schema ever differ.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("issued_credential") as batch:
        batch.add_column(sa.Column("batch_id", sa.String(length=36), nullable=True))
        batch.add_column(sa.Column("dataset_sha256", sa.String(length=64), nullable=True))
    op.create_index(op.f("ix_issued_credential_batch_id"), "issued_credential", ["batch_id"])
    with op.batch_alter_table("credential_offer") as batch:
        batch.add_column(sa.Column("refresh_family_expires_at", sa.DateTime(timezone=True),
                                   nullable=True))
        batch.add_column(sa.Column("refresh_revoked_at", sa.DateTime(timezone=True),
                                   nullable=True))
    op.create_table(
        "refresh_token",
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("offer_id", sa.String(length=36), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["offer_id"], ["credential_offer.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("token_sha256"),
    )
    op.create_index(op.f("ix_refresh_token_offer_id"), "refresh_token", ["offer_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_refresh_token_offer_id"), table_name="refresh_token")
    op.drop_table("refresh_token")
    with op.batch_alter_table("credential_offer") as batch:
        batch.drop_column("refresh_revoked_at")
        batch.drop_column("refresh_family_expires_at")
    op.drop_index(op.f("ix_issued_credential_batch_id"), table_name="issued_credential")
    with op.batch_alter_table("issued_credential") as batch:
        batch.drop_column("dataset_sha256")
        batch.drop_column("batch_id")
