"""band states hold the forecast itself: the model's quantiles at the state's origin and the
forecast's range warnings, so a cold forecast from the stores reads one row and runs no model

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""
from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Both nullable: states stored before keep serving through the window and onnxruntime
    # until the next prewarm (or forecast from bars) stores them with their quantiles.
    with op.batch_alter_table("band_states") as batch:
        # (horizon, quantiles) float64 of the model's float32 output at as_of
        batch.add_column(sa.Column("quantiles", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("warnings", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("band_states") as batch:
        batch.drop_column("warnings")
        batch.drop_column("quantiles")
