"""Worklist page indexes (issue 7): a pool's items in (priority, due time, id) and (due time, id)
order, so a page is read off an index instead of sorting the whole pool

Revision ID: 0007_worklist_indexes
Revises: 0006_study_facts
Create Date: 2026-11-23 23:10:00

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007_worklist_indexes"
down_revision: str | Sequence[str] | None = "0006_study_facts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # remote_dx.worklist.service reads each priority's branch of the default order, and the
    # "due_at" sort, from these; the id breaks ties, as the page's order does.
    op.create_index(
        "ix_worklist_items_pool_priority_due",
        "worklist_items",
        ["pool_id", "priority", "due_at", "id"],
    )
    op.create_index("ix_worklist_items_pool_due", "worklist_items", ["pool_id", "due_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_worklist_items_pool_due", table_name="worklist_items")
    op.drop_index("ix_worklist_items_pool_priority_due", table_name="worklist_items")
