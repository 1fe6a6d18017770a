"""Report drafts carry a revision number, so an autosave made from an older draft cannot
overwrite a newer one (an ECG confirmation carried into the draft meanwhile, another tab)

Revision ID: 0008_draft_revision
Revises: 0007_worklist_indexes
Create Date: 2026-11-24 07:20:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_draft_revision"
down_revision: str | Sequence[str] | None = "0007_worklist_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("reports") as batch:
        batch.add_column(
            sa.Column("draft_revision", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("reports") as batch:
        batch.drop_column("draft_revision")
