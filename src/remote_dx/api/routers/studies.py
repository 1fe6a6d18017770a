"""One study: patient, series and instances, processing outcome and routing."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, status

from remote_dx.api.deps import CurrentUser, DbSession
from remote_dx.worklist.schemas import StudyDetail
from remote_dx.worklist.service import get_study

router = APIRouter(prefix="/api/v1", tags=["studies"])

# PS3.5 §9.1: a UID is at most 64 characters of digits and dots.
StudyUID = Annotated[
    str, Path(min_length=1, max_length=64, pattern=r"^[0-9.]+$", description="Study Instance UID")
]


@router.get(
    "/studies/{study_uid}",
    summary="A study the current user may see",
    responses={404: {"description": "No such study, or not visible to this user"}},
)
def read_study(study_uid: StudyUID, user: CurrentUser, session: DbSession) -> StudyDetail:
    detail = get_study(session, user, study_uid)
    if detail is None:
        # The same answer whether the study is absent or out of scope: existence is not revealed.
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"study {study_uid} not found")
    return detail
