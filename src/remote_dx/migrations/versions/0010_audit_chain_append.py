"""The audit chain's append as one server-side call on PostgreSQL (audit_chain_append), so the
chain head's row lock is held only inside the database, never across a round trip to an API
process (remote_dx.core.audit._append_batch_psycopg)

Revision ID: 0010_audit_chain_append
Revises: 0009_worklist_versions
Create Date: 2026-11-25 02:30:00

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010_audit_chain_append"
down_revision: str | Sequence[str] | None = "0009_worklist_versions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# ``records``: a JSON array of the batch's records, each its columns and its canonical JSON in
# three parts (remote_dx.core.audit.canonical_parts): before prev_hash, between prev_hash and
# seq, after seq. Those two are the head's to decide; the hash is SHA-256 over the UTF-8 of the
# parts with them filled in, the same bytes, and so the same hash, as
# remote_dx.core.audit.canonical gives. One JSON parameter, not an array per column: an API
# process dumps one string instead of eighteen lists. Each record's detail comes as its JSON
# text: PostgreSQL turns the strings of what it takes apart into text, which cannot hold the
# NUL that a client's query can put into a detail, while json keeps its text as it came.
# Returns each record's seq, prev_hash and hash; nothing when the head row does not exist
# (the caller's session path makes it).
APPEND_FUNCTION = """
CREATE OR REPLACE FUNCTION audit_chain_append(records json)
RETURNS TABLE (linked_seq bigint, linked_prev_hash text, linked_hash text) AS $$
DECLARE
    n integer := json_array_length(records);
    first_seq bigint;
    link text;
    prevs text[] := '{}';
    hashes text[] := '{}';
    parts record;
BEGIN
    UPDATE audit_chain_head AS head SET last_seq = head.last_seq + n WHERE head.id = 1
        RETURNING head.last_seq - n, head.last_hash INTO first_seq, link;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    FOR parts IN
        SELECT r.before_prev, r.between_prev_and_seq, r.after_seq, r.ord
        FROM ROWS FROM (json_to_recordset(records)
            AS (before_prev text, between_prev_and_seq text, after_seq text))
            WITH ORDINALITY AS r(before_prev, between_prev_and_seq, after_seq, ord)
        ORDER BY r.ord
    LOOP
        prevs := prevs || link;
        link := encode(sha256(convert_to(
            parts.before_prev || link || parts.between_prev_and_seq
            || (first_seq + parts.ord)::text || parts.after_seq, 'UTF8'
        )), 'hex');
        hashes := hashes || link;
    END LOOP;
    INSERT INTO audit_records (
        seq, recorded_at, action, outcome, user_id, username, role, institution, patient,
        object_type, object_id, client_address, method, path, status_code, detail, prev_hash,
        hash
    )
    SELECT
        first_seq + r.ord, r.recorded_at, r.action, r.outcome, r.user_id, r.username, r.role,
        r.institution, r.patient, r.object_type, r.object_id, r.client_address, r.method,
        r.path, r.status_code, r.detail::json, prevs[r.ord], hashes[r.ord]
    FROM ROWS FROM (json_to_recordset(records) AS (
        recorded_at timestamptz, action text, outcome integer, user_id integer, username text,
        role text, institution text, patient text, object_type text, object_id text,
        client_address text, method text, path text, status_code integer, detail text
    )) WITH ORDINALITY AS r(
        recorded_at, action, outcome, user_id, username, role, institution, patient,
        object_type, object_id, client_address, method, path, status_code, detail, ord
    );
    UPDATE audit_chain_head AS head SET last_hash = link WHERE head.id = 1;
    RETURN QUERY SELECT first_seq + s.i, prevs[s.i], hashes[s.i]
        FROM generate_subscripts(hashes, 1) AS s(i) ORDER BY s.i;
END
$$ LANGUAGE plpgsql
"""

SIGNATURE = "audit_chain_append(json)"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":  # SQLite: one writer at a time anyway
        op.execute(APPEND_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {SIGNATURE}")
