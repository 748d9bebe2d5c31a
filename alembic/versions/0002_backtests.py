"""backtest runs and their metrics

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""
from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "backtest_runs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("start_date", sa.Date(), nullable=False),
        sa.Column("end_date", sa.Date(), nullable=False),
        sa.Column("tickers", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
    )
    # "the latest run of model X" is the API's default question.
    op.create_index("ix_backtest_runs_version_created", "backtest_runs",
                    ["model_version", "created_at"])
    op.create_table(
        "backtest_metrics",
        sa.Column("run_id", sa.Integer(),
                  sa.ForeignKey("backtest_runs.id", ondelete="CASCADE", name="fk_metrics_run"),
                  nullable=False),
        sa.Column("ticker", sa.String(16), nullable=False),
        sa.Column("horizon", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("metric", sa.String(48), nullable=False),
        # NULL where a metric is undefined (e.g. directional accuracy of the always-zero naive).
        sa.Column("value", sa.Float(), nullable=True),
        # The key's prefix (run_id, ticker, horizon) serves the API's filters.
        sa.PrimaryKeyConstraint("run_id", "ticker", "horizon", "method", "metric",
                                name="pk_backtest_metrics"),
    )
    op.create_index("ix_backtest_metrics_run_horizon", "backtest_metrics", ["run_id", "horizon"])


def downgrade() -> None:
    op.drop_index("ix_backtest_metrics_run_horizon", table_name="backtest_metrics")
    op.drop_table("backtest_metrics")
    op.drop_index("ix_backtest_runs_version_created", table_name="backtest_runs")
    op.drop_table("backtest_runs")
