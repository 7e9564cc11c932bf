"""credentials, status lists, OpenID4VCI offers and the c_nonce store

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

issued_credential: one row per credential, with its place in a status list
(unique per list) and its state; status_list: a brand's lists (shards of
131,072 entries); credential_offer: pre-authorized offers (hashes only);
tessera_nonce: the c_nonce store of tessera.nonces.SqlNonceStore.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('tessera_nonce',
    sa.Column('value', sa.String(length=255), nullable=False),
    sa.Column('data', sa.Text(), nullable=False),
    sa.Column('expires_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('value')
    )
    op.create_index('ix_tessera_nonce_expires_at', 'tessera_nonce', ['expires_at'])
    op.create_table('status_list',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('brand_id', sa.String(length=36), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('full', sa.Boolean(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['brand_id'], ['brand.id'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_status_list_brand_id'), 'status_list', ['brand_id'])
    op.create_index('ix_status_list_open', 'status_list', ['brand_id', 'kind', 'full'])
    op.create_table('credential_offer',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('brand_id', sa.String(length=36), nullable=False),
    sa.Column('member_id', sa.String(length=36), nullable=False),
    sa.Column('configuration_ids', sa.JSON(), nullable=False),
    sa.Column('reference_sha256', sa.String(length=64), nullable=False),
    sa.Column('code_sha256', sa.String(length=64), nullable=False),
    sa.Column('tx_code_mac', sa.String(length=64), nullable=True),
    sa.Column('tx_code_input_mode', sa.String(length=16), nullable=True),
    sa.Column('tx_code_length', sa.Integer(), nullable=True),
    sa.Column('tx_code_description', sa.String(length=300), nullable=True),
    sa.Column('tx_code_failures', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('redeemed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('access_token_sha256', sa.String(length=64), nullable=True),
    sa.Column('access_token_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('issued_configurations', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['brand_id'], ['brand.id'], ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['member_id'], ['member.id'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('access_token_sha256'),
    sa.UniqueConstraint('code_sha256'),
    sa.UniqueConstraint('reference_sha256')
    )
    op.create_index(op.f('ix_credential_offer_brand_id'), 'credential_offer', ['brand_id'])
    op.create_index(op.f('ix_credential_offer_member_id'), 'credential_offer', ['member_id'])
    op.create_table('issued_credential',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('brand_id', sa.String(length=36), nullable=False),
    sa.Column('member_id', sa.String(length=36), nullable=False),
    sa.Column('credential_type', sa.String(length=64), nullable=False),
    sa.Column('format', sa.String(length=16), nullable=False),
    sa.Column('status_list_id', sa.String(length=36), nullable=False),
    sa.Column('status_index', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('status_reason', sa.String(length=200), nullable=True),
    sa.Column('superseded_by', sa.String(length=36), nullable=True),
    sa.Column('holder_key_thumbprint', sa.String(length=64), nullable=True),
    sa.Column('issued_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status_changed_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['brand_id'], ['brand.id'], ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['member_id'], ['member.id'], ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['status_list_id'], ['status_list.id'], ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['superseded_by'], ['issued_credential.id'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('status_list_id', 'status_index')
    )
    op.create_index(op.f('ix_issued_credential_brand_id'), 'issued_credential', ['brand_id'])
    op.create_index('ix_issued_credential_member_type', 'issued_credential',
                    ['member_id', 'credential_type'])


def downgrade() -> None:
    op.drop_index('ix_issued_credential_member_type', table_name='issued_credential')
    op.drop_index(op.f('ix_issued_credential_brand_id'), table_name='issued_credential')
    op.drop_table('issued_credential')
    op.drop_index(op.f('ix_credential_offer_member_id'), table_name='credential_offer')
    op.drop_index(op.f('ix_credential_offer_brand_id'), table_name='credential_offer')
    op.drop_table('credential_offer')
    op.drop_index('ix_status_list_open', table_name='status_list')
    op.drop_index(op.f('ix_status_list_brand_id'), table_name='status_list')
    op.drop_table('status_list')
    op.drop_index('ix_tessera_nonce_expires_at', table_name='tessera_nonce')
    op.drop_table('tessera_nonce')
