"""DICOM nodes and receiver security (issues 5 and 7): a device's listening address (C-MOVE
destination), its source-address allow-list and its rate limits

Revision ID: 0005_dicom_nodes
Revises: 0004
Create Date: 2026-11-23 21:40:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_dicom_nodes"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("host", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("port", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("allowed_addresses", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("max_associations", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("max_instances_per_second", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("max_instances_per_second")
        batch_op.drop_column("max_associations")
        batch_op.drop_column("allowed_addresses")
        batch_op.drop_column("port")
        batch_op.drop_column("host")
