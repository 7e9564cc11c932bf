"""indexes that keep every hot statement O(1) without planner statistics

Composite indexes matching the hot predicates replace single-column ones (a
member's qualifying window of ledger entries, live lots, open holds, live
credentials of a type), and indexes that were a prefix of a unique key (or
could be picked instead of the primary key) are dropped: a generic plan made
while the tables were empty, never replanned without ANALYZE, used them and
read every row of a brand or member per lookup (bench/README.md "Hot
statements in O(1) without planner statistics (session 7)").

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29

Hand-checked against issuer._models and issuer._log_models;
tests/issuer/test_migrations.py fails if the models and the migrated schema ever
differ.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision: str | None = "0006"
branch_labels = None
depends_on = None

# (table, new index, its columns, the indexes it replaces (name, columns))
_CHANGES: tuple[tuple[str, str | None, list[str], list[tuple[str, list[str]]]], ...] = (
    ("idempotency_record", None, [], [("ix_idempotency_record_brand_id", ["brand_id"])]),
    ("ledger_entry", "ix_ledger_entry_member", ["member_id", "id"],
     [("ix_ledger_entry_member_id", ["member_id"]),
      ("ix_ledger_entry_brand_id", ["brand_id"])]),
    ("point_lot", "ix_point_lot_member_remaining", ["member_id", "remaining"],
     [("ix_point_lot_member_id", ["member_id"])]),
    ("point_hold", "ix_point_hold_member_open", ["member_id", "status", "expires_at"],
     [("ix_point_hold_member_id", ["member_id"])]),
    ("member", None, [], [("ix_member_brand_id", ["brand_id"]),
                          ("ix_member_program_id", ["program_id"])]),
    ("issued_credential", "ix_issued_credential_member_current",
     ["member_id", "credential_type", "superseded_by"],
     [("ix_issued_credential_member_type", ["member_id", "credential_type"]),
      ("ix_issued_credential_brand_id", ["brand_id"])]),
    ("status_list", None, [], [("ix_status_list_brand_id", ["brand_id"])]),
    ("redemption", None, [], [("ix_redemption_partner_id", ["partner_id"])]),
)


# PostgreSQL only: unique keys sharing a leading column get the distinguishing one first
# (table, (old name, old columns), (new name, new columns)). SQLite keeps them: its
# planner prefers the key whose every column a lookup pins (tests/issuer/
# test_query_plans.py), and changing a unique constraint there rebuilds the table, which
# foreign keys with ON DELETE RESTRICT pointing at it forbid. Alembic compares unique
# keys by their set of columns, so both schemas match the models.
_UNIQUE_KEYS: tuple[tuple[str, tuple[str, list[str]], tuple[str, list[str]]], ...] = (
    ("member", ("member_program_id_did_key", ["program_id", "did"]),
     ("member_did_program_id_key", ["did", "program_id"])),
    ("member", ("member_program_id_membership_number_key", ["program_id", "membership_number"]),
     ("member_membership_number_program_id_key", ["membership_number", "program_id"])),
    ("redemption", ("redemption_partner_id_order_reference_key", ["partner_id", "order_reference"]),
     ("redemption_order_reference_partner_id_key", ["order_reference", "partner_id"])),
    ("redemption", ("redemption_partner_id_nonce_key", ["partner_id", "nonce"]),
     ("redemption_nonce_partner_id_key", ["nonce", "partner_id"])),
)


# The entries a member's qualifying sums read: those with qualifying points.
_COUNTS = "qualifying_points <> 0"


def upgrade() -> None:
    op.create_index("ix_ledger_entry_member_qualifying", "ledger_entry",
                    ["member_id", "qualifying_at"], postgresql_where=sa.text(_COUNTS),
                    sqlite_where=sa.text(_COUNTS))
    for table, name, columns, replaced in _CHANGES:
        if name is not None:
            op.create_index(name, table, columns)
        for old, _ in replaced:
            op.drop_index(old, table_name=table)
    if op.get_bind().dialect.name == "postgresql":
        for table, (old, _), (new, columns) in _UNIQUE_KEYS:
            op.create_unique_constraint(new, table, columns)
            op.drop_constraint(old, table, type_="unique")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, (old, old_columns), (new, _) in reversed(_UNIQUE_KEYS):
            op.create_unique_constraint(old, table, old_columns)
            op.drop_constraint(new, table, type_="unique")
    for table, name, _, replaced in reversed(_CHANGES):
        for old, old_columns in replaced:
            op.create_index(old, table, old_columns)
        if name is not None:
            op.drop_index(name, table_name=table)
    op.drop_index("ix_ledger_entry_member_qualifying", table_name="ledger_entry")
