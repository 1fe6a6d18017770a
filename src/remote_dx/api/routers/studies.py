"""One study: patient, series and instances, processing outcome and routing."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, Response, status

from remote_dx.api.audit import AuditedAnswer, audited_json, note, patient_key
from remote_dx.api.deps import (
    CheckedToken,
    authenticate,
    authenticate_pipelined,
    hot_cursor,
    hot_read,
    run_hot,
)
from remote_dx.worklist.schemas import StudyDetail
from remote_dx.worklist.service import get_study, get_study_by_cursor, start_study_read

router = APIRouter(prefix="/api/v1", tags=["studies"])

# PS3.5 §9.1: a UID is at most 64 characters of digits and dots.
StudyUID = Annotated[
    str, Path(min_length=1, max_length=64, pattern=r"^[0-9.]+$", description="Study Instance UID")
]


@router.get(
    "/studies/{study_uid}",
    summary="A study the current user may see",
    responses={404: {"description": "No such study, or not visible to this user"}},
    response_model=StudyDetail,
)
async def read_study(request: Request, study_uid: StudyUID, token: CheckedToken) -> Response:
    # A viewer opens studies one after another: the user and the study in one thread-pool
    # call, which starts the audit record; the answer waits for its commit on the event loop.
    answer = await run_hot("study", _study_answer, request, token, study_uid)
    return await answer.when_written()


def _study_answer(request: Request, token: str, study_uid: str) -> AuditedAnswer:
    # Not plan_joins_as_written: its SET was a round trip of its own, and these statements (a
    # study by its UID, its series by key), once psycopg has prepared them, settle on a generic
    # plan without it, as their best plan does not depend on the values.
    # Without it: 584-612 studies/s against 490-540 at 50 clients, PostgreSQL 0.6 ms a study
    # instead of 0.7 (bench/load.py, session 10).
    with hot_cursor(request, token) as cursor:
        if cursor is not None:  # PostgreSQL: the same statements without SQLAlchemy's handling
            # The user, the study and its series in one round trip, as the user was scoped last.
            user, started = authenticate_pipelined(
                request,
                cursor,
                token,
                lambda connection, role, institution_id: start_study_read(
                    connection, role, institution_id, study_uid
                ),
            )
            # None: the user's first view here, or their scope changed: read for who they are.
            detail = started.detail() if started else get_study_by_cursor(cursor, user, study_uid)
    if cursor is None:
        with hot_read(request, one_statement_each=True) as session:
            user = authenticate(request, session, token)
            detail = get_study(session, user, study_uid)
    if detail is None:
        # The same answer whether the study is absent or out of scope: existence is not revealed.
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"study {study_uid} not found")
    # The audit record's patient, known here: spares the record its own lookup.
    note(request, patient=patient_key(detail.patient.patient_id, detail.patient.issuer))
    return audited_json(request, detail)
