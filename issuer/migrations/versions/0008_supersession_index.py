"""a new batch reads only the credentials it supersedes

``ix_issued_credential_member_current`` (member, type, superseded_by) gains
format, dataset digest and status: a batch's supersession query
(issuer._status_lists.mark_superseded) is then ranges of the index around its
own dataset, and no longer reads the member's whole pool of credentials with
unchanged claims, which grew with every top-up (bench/README.md "Issuance on
SQLite, the gate's hold (session 8)"). The statements that pin only the first
three columns (a ledger write revoking the live points credentials, its
status condition now a range of the index) read the same rows as before.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30

tests/issuer/test_migrations.py fails if the models and the migrated schema ever
differ.
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision: str | None = "0007"
branch_labels = None
depends_on = None

_NAME = "ix_issued_credential_member_current"
_BEFORE = ["member_id", "credential_type", "superseded_by"]
_AFTER = [*_BEFORE, "format", "dataset_sha256", "status"]


def upgrade() -> None:
    op.drop_index(_NAME, table_name="issued_credential")
    op.create_index(_NAME, "issued_credential", _AFTER)


def downgrade() -> None:
    op.drop_index(_NAME, table_name="issued_credential")
    op.create_index(_NAME, "issued_credential", _BEFORE)
