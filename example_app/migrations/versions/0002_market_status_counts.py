"""market status counters kept by triggers

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 16:00:00

"""

import sqlalchemy as sa
from alembic import op

from example_app.counters import install_market_counters
from example_app.counters import remove_market_counters

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "market_status_counts",
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("status"),
    )
    install_market_counters(op.get_bind())


def downgrade():
    remove_market_counters(op.get_bind())
    op.drop_table("market_status_counts")
