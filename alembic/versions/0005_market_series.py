"""market series: the equal-weighted cross-section of the cached bars, one row per session

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""
from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "market_series",
        sa.Column("date", sa.Date(), primary_key=True),
        # mean one-session log return of the tickers with bars on this session and the one before
        sa.Column("market_return", sa.Float(), nullable=False),
        sa.Column("n_tickers", sa.Integer(), nullable=False),
    )
    # Derive it from the bars already cached, as the write path would have.
    from service.sources.market import update_market

    update_market(op.get_bind())


def downgrade() -> None:
    op.drop_table("market_series")
