"""ECG: analysis records, critical alerts, re-acquire requests, device API keys (issue 3)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 18:47:22.830911

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _enum(*values: str, name: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, length=32)


def upgrade() -> None:
    op.create_table(
        "critical_alerts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_pk", sa.Integer(), nullable=False),
        sa.Column("pool_id", sa.Integer(), nullable=False),
        sa.Column("origin_id", sa.Integer(), nullable=False),
        sa.Column("source", _enum("ecg-analysis", "reader", name="alertsource"), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_by_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["acknowledged_by_id"], ["users.id"]),
        sa.ForeignKeyConstraint(["origin_id"], ["institutions.id"]),
        sa.ForeignKeyConstraint(["pool_id"], ["institutions.id"]),
        sa.ForeignKeyConstraint(["study_pk"], ["studies.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("critical_alerts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_critical_alerts_pool_id"), ["pool_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_critical_alerts_raised_at"), ["raised_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_critical_alerts_study_pk"), ["study_pk"], unique=False)

    op.create_table(
        "ecg_analyses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_pk", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("algorithm_version", sa.String(length=64), nullable=True),
        sa.Column(
            "status", _enum("pending", "done", "failed", name="analysisstatus"), nullable=False
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("device_measurements", sa.JSON(), nullable=True),
        sa.Column("heart_rate", sa.Float(), nullable=True),
        sa.Column("rhythm", sa.String(length=32), nullable=True),
        sa.Column("critical", sa.Boolean(), nullable=False),
        sa.Column("technically_unsatisfactory", sa.Boolean(), nullable=False),
        sa.Column("analysed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("confirmed", sa.JSON(), nullable=True),
        sa.Column("confirmed_by_id", sa.Integer(), nullable=True),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["confirmed_by_id"], ["users.id"]),
        sa.ForeignKeyConstraint(["study_pk"], ["studies.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("study_pk"),
    )
    op.create_table(
        "reacquire_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_pk", sa.Integer(), nullable=False),
        sa.Column("origin_id", sa.Integer(), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("leads", sa.JSON(), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["origin_id"], ["institutions.id"]),
        sa.ForeignKeyConstraint(["study_pk"], ["studies.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("study_pk"),
    )
    with op.batch_alter_table("reacquire_requests", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_reacquire_requests_origin_id"), ["origin_id"], unique=False
        )

    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("api_key_hash", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_devices_api_key_hash"), ["api_key_hash"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_devices_api_key_hash"))
        batch_op.drop_column("api_key_hash")

    with op.batch_alter_table("reacquire_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reacquire_requests_origin_id"))
    op.drop_table("reacquire_requests")
    op.drop_table("ecg_analyses")
    with op.batch_alter_table("critical_alerts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_critical_alerts_study_pk"))
        batch_op.drop_index(batch_op.f("ix_critical_alerts_raised_at"))
        batch_op.drop_index(batch_op.f("ix_critical_alerts_pool_id"))
    op.drop_table("critical_alerts")
