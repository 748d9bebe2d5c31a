"""serving stores: feature rows per (ticker, feature version, date), band states per (model
version, ticker, as_of), and a per-ticker bars revision they are checked against

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""
from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batch mode: SQLite alters a table by copying it (add works natively, drop does not).
    with op.batch_alter_table("tickers") as batch:
        batch.add_column(sa.Column("bars_revision", sa.Integer(), server_default="0",
                                   nullable=False))
    op.create_table(
        "feature_rows",
        sa.Column("ticker", sa.String(16), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("date", sa.Date(), nullable=False),
        # FEATURE_NAMES' values at that date, float64 little-endian: what build_features gives.
        sa.Column("features", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("ticker", "version", "date", name="pk_feature_rows"),
    )
    op.create_table(
        "feature_sets",
        sa.Column("ticker", sa.String(16), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("bars_revision", sa.Integer(), nullable=False),
        sa.Column("last_date", sa.Date(), nullable=True),
        sa.Column("n_rows", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
        sa.PrimaryKeyConstraint("ticker", "version", name="pk_feature_sets"),
    )
    op.create_table(
        "band_states",
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("ticker", sa.String(16), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("bars_revision", sa.Integer(), nullable=False),
        sa.Column("last_close", sa.Float(), nullable=False),
        sa.Column("horizons", sa.Integer(), nullable=False),
        # ACI's Q-hat per horizon slot 1..horizons and band level, float64 (horizons, levels).
        sa.Column("qhat", sa.LargeBinary(), nullable=False),
        sa.Column("recent_coverage", sa.Float(), nullable=True),
        sa.Column("recent_sessions", sa.Integer(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
        sa.PrimaryKeyConstraint("model_version", "ticker", "as_of", name="pk_band_states"),
    )


def downgrade() -> None:
    op.drop_table("band_states")
    op.drop_table("feature_sets")
    op.drop_table("feature_rows")
    with op.batch_alter_table("tickers") as batch:
        batch.drop_column("bars_revision")
