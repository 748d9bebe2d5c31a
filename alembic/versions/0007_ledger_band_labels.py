"""ledger rows say which band they hold: the 10-90% band's quantiles (0.1, 0.9), where the
7-quantile models' rows were labelled with their outermost quantiles (0.05, 0.95)

Every recorded row holds a step's `lower`/`upper`, which have been the 80 % (10-90 %) band
since the bands got levels; the label was taken from the ends of the model's quantile list,
right while that list was (0.1, 0.5, 0.9) and wrong once it grew to seven. The values are
unchanged, and the scores read the values, not the labels: only the labels are mended.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""
from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_LEDGER = sa.table("ledger_forecasts", sa.column("lower_quantile", sa.Float),
                   sa.column("upper_quantile", sa.Float))


def upgrade() -> None:
    op.execute(_LEDGER.update()
               .where(_LEDGER.c.lower_quantile == 0.05, _LEDGER.c.upper_quantile == 0.95)
               .values(lower_quantile=0.1, upper_quantile=0.9))


def downgrade() -> None:
    # Nothing to undo: 0006's schema is the same, and the old labels were wrong.
    pass
