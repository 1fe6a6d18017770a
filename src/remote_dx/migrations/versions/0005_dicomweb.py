"""DICOMweb: QIDO-RS return keys and matching keys in the index

Studies get Referring Physician's Name and Study ID, instances their image geometry (Rows,
Columns, Number of Frames), and patients an index on Patient ID alone, so QIDO-RS (PS3.18 §10.6)
is answered from the index without reading objects.

Revision ID: 0005_dicomweb
Revises: 0004
Create Date: 2026-11-23 21:30:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_dicomweb"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("referring_physician", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("dicom_study_id", sa.String(length=16), nullable=True))
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rows", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("columns", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("number_of_frames", sa.Integer(), nullable=True))
    op.create_index(op.f("ix_patients_patient_id"), "patients", ["patient_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_patients_patient_id"), table_name="patients")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("number_of_frames")
        batch_op.drop_column("columns")
        batch_op.drop_column("rows")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_column("dicom_study_id")
        batch_op.drop_column("referring_physician")
