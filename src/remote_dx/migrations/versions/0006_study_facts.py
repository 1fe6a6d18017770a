"""Statistics facts (issue 6): one narrow row per study for the dashboards, the queue of studies
whose row is stale, and (PostgreSQL) the triggers that fill that queue; merges the 0005 heads

Revision ID: 0006_study_facts
Revises: 0005_dicom_nodes, 0005_dicomweb, 0005_ops, 0005_stats, 0005_trust
Create Date: 2026-11-23 22:50:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_study_facts"
down_revision: str | Sequence[str] | None = (
    "0005_dicom_nodes",
    "0005_dicomweb",
    "0005_ops",
    "0005_stats",
    "0005_trust",
)
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Which written columns change a study's facts (remote_dx.stats.facts.select_facts). A trigger
# "UPDATE OF" fires when the column is in the statement's SET list, whatever the value; the ORM
# only sets changed columns, so lease heartbeats and status moves do not mark anything.
WATCHED = {
    "studies": ("id", "received_at", "origin_id", "modalities"),
    "worklist_items": ("study_pk", "pool_id", "signed_claim_at"),
    "reports": (
        "study_pk", "pool_id", "status", "signed_at", "signed_by_id", "confirmed_at",
        "positive", "critical",
    ),
    "routing_decisions": ("study_pk", "kind", "due_at"),
    "ecg_analyses": ("study_pk", "technically_unsatisfactory"),
    "reacquire_requests": ("study_pk",),
}  # fmt: skip

MARK_FUNCTION = """
CREATE OR REPLACE FUNCTION study_facts_mark() RETURNS trigger AS $$
DECLARE
    old_pk integer;
    new_pk integer;
BEGIN
    IF TG_TABLE_NAME = 'studies' THEN
        IF TG_OP <> 'INSERT' THEN old_pk := OLD.id; END IF;
        IF TG_OP <> 'DELETE' THEN new_pk := NEW.id; END IF;
    ELSE
        IF TG_OP <> 'INSERT' THEN old_pk := OLD.study_pk; END IF;
        IF TG_OP <> 'DELETE' THEN new_pk := NEW.study_pk; END IF;
    END IF;
    IF new_pk IS NOT NULL THEN
        INSERT INTO study_facts_dirty (study_pk) VALUES (new_pk) ON CONFLICT DO NOTHING;
    END IF;
    IF old_pk IS NOT NULL AND old_pk IS DISTINCT FROM new_pk THEN
        INSERT INTO study_facts_dirty (study_pk) VALUES (old_pk) ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""

# The network's shape (level, parent) decides every study's county and pool level: rare, so
# simply mark every study.
MARK_ALL_FUNCTION = """
CREATE OR REPLACE FUNCTION study_facts_mark_all() RETURNS trigger AS $$
BEGIN
    INSERT INTO study_facts_dirty (study_pk) SELECT id FROM studies ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    op.create_table(
        "study_facts",
        sa.Column("study_pk", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("origin_id", sa.Integer(), nullable=False),
        sa.Column("county_id", sa.Integer(), nullable=True),
        sa.Column("modalities", sa.String(length=64), nullable=True),
        sa.Column("pool_id", sa.Integer(), nullable=True),
        sa.Column(
            "pool_level",
            sa.Enum(
                "province",
                "city",
                "county",
                "township",
                "village",
                name="institutionlevel",
                native_enum=False,
                length=32,
            ),
            nullable=True,
        ),
        sa.Column("report_id", sa.Integer(), nullable=True),
        sa.Column("is_read", sa.Boolean(), nullable=False),
        sa.Column("result_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("signed_by_id", sa.Integer(), nullable=True),
        sa.Column("positive", sa.Boolean(), nullable=True),
        sa.Column("critical", sa.Boolean(), nullable=True),
        sa.Column("first_due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("signed_claim_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("tat_seconds", sa.Float(), nullable=True),
        sa.Column("claim_sign_seconds", sa.Float(), nullable=True),
        sa.Column("sla_met", sa.Boolean(), nullable=False),
        sa.Column("with_sla", sa.Boolean(), nullable=False),
        sa.Column("is_ecg", sa.Boolean(), nullable=True),
        sa.Column("analysed", sa.Boolean(), nullable=False),
        sa.Column("unsatisfactory", sa.Boolean(), nullable=False),
        sa.Column("sent_back", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("study_pk"),
    )
    op.create_index("ix_study_facts_received_at", "study_facts", ["received_at"])
    op.create_index("ix_study_facts_signed_at", "study_facts", ["signed_at"])
    op.create_table(
        "study_facts_dirty",
        sa.Column("study_pk", sa.Integer(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("study_pk"),
    )
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite: the statistics rebuild the facts on every refresh (stats/facts.py)
    op.execute(MARK_FUNCTION)
    op.execute(MARK_ALL_FUNCTION)
    for table, columns in WATCHED.items():
        op.execute(
            f"CREATE TRIGGER {table}_study_facts AFTER INSERT OR DELETE OR UPDATE OF "
            f"{', '.join(columns)} ON {table} FOR EACH ROW EXECUTE FUNCTION study_facts_mark()"
        )
    op.execute(
        "CREATE TRIGGER institutions_study_facts AFTER UPDATE OF level, parent_id ON institutions "
        "FOR EACH ROW WHEN (OLD.level IS DISTINCT FROM NEW.level "
        "OR OLD.parent_id IS DISTINCT FROM NEW.parent_id) EXECUTE FUNCTION study_facts_mark_all()"
    )
    # Studies already held get their facts at the first refresh.
    op.execute("INSERT INTO study_facts_dirty (study_pk) SELECT id FROM studies")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in (*WATCHED, "institutions"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_study_facts ON {table}")
        op.execute("DROP FUNCTION IF EXISTS study_facts_mark_all()")
        op.execute("DROP FUNCTION IF EXISTS study_facts_mark()")
    op.drop_table("study_facts_dirty")
    op.drop_index("ix_study_facts_signed_at", table_name="study_facts")
    op.drop_index("ix_study_facts_received_at", table_name="study_facts")
    op.drop_table("study_facts")
