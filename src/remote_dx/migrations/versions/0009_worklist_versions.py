"""A change counter per reading pool, counted up by triggers in the transaction of every change
to what that pool's worklist page shows (PostgreSQL), so API processes can keep a page until it
changes (remote_dx.worklist.page_cache)

Revision ID: 0009_worklist_versions
Revises: 0008_draft_revision
Create Date: 2026-11-24 12:10:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_worklist_versions"
down_revision: str | Sequence[str] | None = "0008_draft_revision"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# What a worklist page shows or filters on (remote_dx.worklist.service._page_statement and
# _filtered), per table. A trigger "UPDATE OF" fires when the column is in the statement's SET
# list; the ORM sets only changed columns, so a study's processing or a report's draft moves
# no counter. Every column of worklist_items counts (status, lease, priority, due time, pool).
STUDY_KEYED = {
    "studies": (
        "study_uid", "patient_pk", "origin_id", "modalities", "description", "received_at",
        "num_instances",
    ),
    "series": ("study_pk", "modality"),
    "ecg_analyses": (
        "study_pk", "status", "heart_rate", "rhythm", "critical", "technically_unsatisfactory",
    ),
}  # fmt: skip

# The pools are counted up in pool order, so two transactions that touch the same two pools
# (an item escalated one way while another comes back) take the rows' locks in the same order.
BUMP_FUNCTION = """
CREATE OR REPLACE FUNCTION worklist_versions_bump(pools integer[]) RETURNS void AS $$
BEGIN
    INSERT INTO worklist_versions AS kept (pool_id, version)
    SELECT DISTINCT pool, 1 FROM unnest(pools) AS pool WHERE pool IS NOT NULL ORDER BY pool
    ON CONFLICT (pool_id) DO UPDATE SET version = kept.version + 1;
END
$$ LANGUAGE plpgsql
"""

# OLD is NULL for an INSERT and NEW for a DELETE (PostgreSQL 11 on, as EXECUTE FUNCTION is), and
# the bump skips NULL pools, so one statement serves all three operations.
ITEM_FUNCTION = """
CREATE OR REPLACE FUNCTION worklist_versions_item() RETURNS trigger AS $$
BEGIN
    PERFORM worklist_versions_bump(ARRAY[OLD.pool_id, NEW.pool_id]);
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""

STUDY_FUNCTION = """
CREATE OR REPLACE FUNCTION worklist_versions_study() RETURNS trigger AS $$
DECLARE
    old_pk integer;
    new_pk integer;
BEGIN
    IF TG_TABLE_NAME = 'studies' THEN
        old_pk := OLD.id;
        new_pk := NEW.id;
    ELSE
        old_pk := OLD.study_pk;
        new_pk := NEW.study_pk;
    END IF;
    PERFORM worklist_versions_bump(
        ARRAY(SELECT pool_id FROM worklist_items WHERE study_pk IN (old_pk, new_pk))
    );
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""

PATIENT_FUNCTION = """
CREATE OR REPLACE FUNCTION worklist_versions_patient() RETURNS trigger AS $$
BEGIN
    PERFORM worklist_versions_bump(ARRAY(
        SELECT item.pool_id FROM worklist_items AS item
        JOIN studies AS study ON study.id = item.study_pk
        WHERE study.patient_pk = NEW.id
    ));
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""

# An institution's name or code, a reader's full name: shown on every pool's pages, and rare.
ALL_FUNCTION = """
CREATE OR REPLACE FUNCTION worklist_versions_all() RETURNS trigger AS $$
BEGIN
    PERFORM worklist_versions_bump(ARRAY(SELECT pool_id FROM worklist_versions));
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""

# Constraint triggers, deferred to the commit: a counter's row lock is then the last lock a
# transaction takes and is held only while it commits. Taken at the change instead, it could
# close a cycle that did not exist before: an instance filed into a routed study holds the
# study's row and would wait for the pool's counter, while a reader's signing holds the
# counter (its item changed first) and waits for the study's row.
_DEFERRED = "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
TRIGGERS = (
    "CREATE CONSTRAINT TRIGGER worklist_items_worklist_versions AFTER INSERT OR DELETE OR UPDATE "
    f"ON worklist_items {_DEFERRED} EXECUTE FUNCTION worklist_versions_item()",
    *(
        f"CREATE CONSTRAINT TRIGGER {table}_worklist_versions AFTER INSERT OR DELETE OR UPDATE OF "
        f"{', '.join(columns)} ON {table} {_DEFERRED} EXECUTE FUNCTION worklist_versions_study()"
        for table, columns in STUDY_KEYED.items()
    ),
    "CREATE CONSTRAINT TRIGGER patients_worklist_versions AFTER UPDATE OF patient_id, name, sex, "
    f"birth_date ON patients {_DEFERRED} EXECUTE FUNCTION worklist_versions_patient()",
    "CREATE CONSTRAINT TRIGGER institutions_worklist_versions AFTER UPDATE OF name, code "
    f"ON institutions {_DEFERRED} "
    "WHEN (OLD.name IS DISTINCT FROM NEW.name OR OLD.code IS DISTINCT FROM NEW.code) "
    "EXECUTE FUNCTION worklist_versions_all()",
    f"CREATE CONSTRAINT TRIGGER users_worklist_versions AFTER UPDATE OF full_name ON users "
    f"{_DEFERRED} WHEN (OLD.full_name IS DISTINCT FROM NEW.full_name) "
    "EXECUTE FUNCTION worklist_versions_all()",
)
TRIGGER_TABLES = ("worklist_items", *STUDY_KEYED, "patients", "institutions", "users")
FUNCTIONS = (
    "worklist_versions_all()",
    "worklist_versions_patient()",
    "worklist_versions_study()",
    "worklist_versions_item()",
    "worklist_versions_bump(integer[])",
)


def upgrade() -> None:
    op.create_table(
        "worklist_versions",
        sa.Column("pool_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("pool_id"),
    )
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite: no triggers, so no row, so no page is ever kept (see the model)
    for function in (BUMP_FUNCTION, ITEM_FUNCTION, STUDY_FUNCTION, PATIENT_FUNCTION, ALL_FUNCTION):
        op.execute(function)
    for trigger in TRIGGERS:
        op.execute(trigger)
    op.execute(
        "INSERT INTO worklist_versions (pool_id, version) "
        "SELECT DISTINCT pool_id, 1 FROM worklist_items"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in TRIGGER_TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_worklist_versions ON {table}")
        for function in FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS {function}")
    op.drop_table("worklist_versions")
