"""bars and tickers

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bars",
        sa.Column("ticker", sa.String(16), nullable=False),
        sa.Column("date", sa.Date(), nullable=False),
        sa.Column("open", sa.Float(), nullable=False),
        sa.Column("high", sa.Float(), nullable=False),
        sa.Column("low", sa.Float(), nullable=False),
        sa.Column("close", sa.Float(), nullable=False),
        sa.Column("adj_close", sa.Float(), nullable=False),
        sa.Column("volume", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("ingested_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
        sa.PrimaryKeyConstraint("ticker", "date", name="pk_bars"),
    )
    op.create_index("ix_bars_date", "bars", ["date"])
    op.create_table(
        "tickers",
        sa.Column("symbol", sa.String(16), primary_key=True),
        sa.Column("first_bar_date", sa.Date()),
        sa.Column("last_bar_date", sa.Date()),
        sa.Column("last_refresh_at", sa.DateTime(timezone=True)),
        sa.Column("last_refresh_status", sa.String(16)),
        sa.Column("last_refresh_error", sa.Text()),
    )


def downgrade() -> None:
    op.drop_table("tickers")
    op.drop_index("ix_bars_date", table_name="bars")
    op.drop_table("bars")
