"""market embeddings for semantic search

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 16:10:00

"""

import sqlalchemy as sa
from alembic import op

from flask_backend_patterns.repository import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "market_embeddings",
        sa.Column("market_id", sa.String(length=32), nullable=False),
        sa.Column("embedder", sa.String(length=64), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("market_version", sa.Integer(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["market_id"], ["markets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("market_id"),
    )
    with op.batch_alter_table("market_embeddings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_market_embeddings_revision"), ["revision"], unique=False)
    search_revision = op.create_table(
        "search_revision",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(search_revision, [{"id": 1, "revision": 0}])


def downgrade():
    op.drop_table("search_revision")
    with op.batch_alter_table("market_embeddings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_market_embeddings_revision"))
    op.drop_table("market_embeddings")
