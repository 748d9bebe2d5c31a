"""forecast ledger (live forecasts and their scores) and scheduler job runs

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""
from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_forecasts",
        # One live forecast: from the bars up to as_of, `horizon` trading days ahead.
        sa.Column("ticker", sa.String(16), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("horizon", sa.Integer(), nullable=False),
        sa.Column("target_date", sa.Date(), nullable=False),
        sa.Column("last_close", sa.Float(), nullable=False),
        sa.Column("lower", sa.Float(), nullable=False),
        sa.Column("median", sa.Float(), nullable=False),
        sa.Column("upper", sa.Float(), nullable=False),
        sa.Column("lower_quantile", sa.Float(), nullable=False),
        sa.Column("upper_quantile", sa.Float(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
        # Filled when the horizon-th bar after as_of is stored; NULL while not yet due.
        sa.Column("realized_date", sa.Date(), nullable=True),
        sa.Column("realized_close", sa.Float(), nullable=True),
        sa.Column("error", sa.Float(), nullable=True),
        sa.Column("naive_error", sa.Float(), nullable=True),
        sa.Column("inside", sa.Boolean(), nullable=True),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("ticker", "as_of", "model_version", "horizon",
                                name="pk_ledger_forecasts"),
    )
    # GET /metrics/live groups by (model_version, horizon).
    op.create_index("ix_ledger_version_horizon", "ledger_forecasts",
                    ["model_version", "horizon"])
    op.create_table(
        "job_runs",
        # One attempt of a scheduled job for one key (the session date, the retrain period).
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job", sa.String(32), nullable=False),
        sa.Column("run_key", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("runner", sa.String(128), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_job_runs_job_key", "job_runs", ["job", "run_key"])


def downgrade() -> None:
    op.drop_index("ix_job_runs_job_key", table_name="job_runs")
    op.drop_table("job_runs")
    op.drop_index("ix_ledger_version_horizon", table_name="ledger_forecasts")
    op.drop_table("ledger_forecasts")
