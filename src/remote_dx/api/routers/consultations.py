"""Consultations (会诊): a reader asks a higher-level pool; both opinions are kept and shown."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status
from sqlalchemy import select

from remote_dx.api.deps import CurrentUser, DbSession
from remote_dx.core.models import Consultation, Institution, User
from remote_dx.routing.escalation import (
    answer_consultation,
    list_consultations,
    request_consultation,
)
from remote_dx.routing.schemas import (
    ConsultationAnswer,
    ConsultationRequest,
    ConsultationView,
    PoolRef,
)

router = APIRouter(prefix="/api/v1", tags=["consultations"])

StudyUID = Annotated[
    str, Path(min_length=1, max_length=64, pattern=r"^[0-9.]+$", description="Study Instance UID")
]
_ERRORS = {
    403: {"description": "Not a reader of the pool concerned"},
    404: {"description": "No such study (or consultation), or not visible to this user"},
    409: {"description": "Already signed, a consultation is open, or the study changed"},
}


def _views(
    session: DbSession, study_uid: str, consultations: list[Consultation]
) -> list[ConsultationView]:
    pool_ids = {c.from_pool_id for c in consultations} | {c.to_pool_id for c in consultations}
    pools = {
        i.id: PoolRef(code=i.code, name=i.name, level=str(i.level))
        for i in session.scalars(select(Institution).where(Institution.id.in_(pool_ids)))
    }
    user_ids = {c.requested_by_id for c in consultations} | {
        c.answered_by_id for c in consultations
    }
    names = dict(
        session.execute(
            select(User.id, User.full_name).where(User.id.in_({u for u in user_ids if u}))
        ).all()
    )
    return [
        ConsultationView(
            id=c.id,
            study_uid=study_uid,
            status=str(c.status),
            automatic=c.automatic,
            from_pool=pools[c.from_pool_id],
            to_pool=pools[c.to_pool_id],
            question=c.question,
            requester_opinion=c.requester_opinion,
            requested_by=names.get(c.requested_by_id) if c.requested_by_id else None,
            requested_at=c.requested_at,
            answer=c.answer,
            answered_by=names.get(c.answered_by_id) if c.answered_by_id else None,
            answered_at=c.answered_at,
        )
        for c in consultations
    ]


@router.post(
    "/studies/{study_uid}/consultations",
    status_code=status.HTTP_201_CREATED,
    summary="Ask a higher-level pool (会诊): the study moves there with the question",
    description=(
        "Only a reader of the pool the study is routed to may ask. The study enters the target "
        "pool (by default the provincial centre, or the rules' `consultation.target`, or "
        "`to_pool`) unread, one escalation level up, due by the consultation SLA; the question "
        "and the requester's opinion are kept."
    ),
    responses=_ERRORS,
)
def post_consultation(
    study_uid: StudyUID, body: ConsultationRequest, user: CurrentUser, session: DbSession
) -> ConsultationView:
    consultation = request_consultation(
        session, user, study_uid, question=body.question, opinion=body.opinion, to_pool=body.to_pool
    )
    return _views(session, study_uid, [consultation])[0]


@router.get(
    "/studies/{study_uid}/consultations",
    summary="A study's consultations with both opinions (the requester's and the answer)",
    responses=_ERRORS,
)
def get_consultations(
    study_uid: StudyUID, user: CurrentUser, session: DbSession
) -> list[ConsultationView]:
    consultations = list(list_consultations(session, user, study_uid))
    return _views(session, study_uid, consultations)


@router.post(
    "/studies/{study_uid}/consultations/{consultation_id}/answer",
    summary="Answer a consultation (a reader of the consulted pool)",
    responses=_ERRORS,
)
def post_answer(
    study_uid: StudyUID,
    consultation_id: int,
    body: ConsultationAnswer,
    user: CurrentUser,
    session: DbSession,
) -> ConsultationView:
    consultation = answer_consultation(
        session, user, study_uid, consultation_id, answer=body.answer
    )
    return _views(session, study_uid, [consultation])[0]
