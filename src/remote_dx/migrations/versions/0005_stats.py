"""Statistics (issue 6): recognition re-use events (exams avoided), the signer's claim time kept
at signing (claim → sign), and an index on the studies' receiving time (every dashboard query)

Revision ID: 0005_stats
Revises: 0004
Create Date: 2026-11-23 21:40:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_stats"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("worklist_items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("signed_claim_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_studies_received_at", "studies", ["received_at"])
    op.create_table(
        "recognition_uses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("report_id", sa.Integer(), nullable=False),
        sa.Column("study_pk", sa.Integer(), nullable=False),
        sa.Column("exam", sa.String(length=64), nullable=False),
        sa.Column("institution_id", sa.Integer(), nullable=False),
        sa.Column("used_by_id", sa.Integer(), nullable=True),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["report_id"], ["reports.id"]),
        sa.ForeignKeyConstraint(["study_pk"], ["studies.id"]),
        sa.ForeignKeyConstraint(["institution_id"], ["institutions.id"]),
        sa.ForeignKeyConstraint(["used_by_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("report_id", "institution_id"),
    )
    op.create_index("ix_recognition_uses_report_id", "recognition_uses", ["report_id"])
    op.create_index("ix_recognition_uses_institution_id", "recognition_uses", ["institution_id"])
    op.create_index("ix_recognition_uses_used_at", "recognition_uses", ["used_at"])


def downgrade() -> None:
    op.drop_table("recognition_uses")
    op.drop_index("ix_studies_received_at", table_name="studies")
    with op.batch_alter_table("worklist_items", schema=None) as batch_op:
        batch_op.drop_column("signed_claim_at")
