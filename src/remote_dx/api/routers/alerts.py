"""Critical results (危急值): the alert list, acknowledgement by a named person, and alerts a
reader raises while reading."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, status
from pydantic import BaseModel, Field

from remote_dx.api.deps import CurrentUser, DbSession
from remote_dx.api.routers.studies import StudyUID
from remote_dx.worklist import alerts
from remote_dx.worklist.schemas import AlertPage, AlertView
from remote_dx.worklist.service import MAX_PAGE

router = APIRouter(prefix="/api/v1", tags=["alerts"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    403: {"description": "This role does not take or raise critical alerts"},
    404: {"description": "No such alert (or study), or not visible to this user"},
    409: {"description": "Already acknowledged: the first acknowledgement stands"},
}


class Acknowledgement(BaseModel):
    name: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"\S",
        description="The named clinician who received the critical value (e.g. 值班医生 王芳)",
    )
    note: str | None = Field(None, max_length=2000, description="What was done, who was told")


class Reason(BaseModel):
    code: str = Field("reader_marked", min_length=1, max_length=64, pattern=r"^[a-z0-9_.-]+$")
    text: str = Field(min_length=1, max_length=500, description="The finding, e.g. 右侧张力性气胸")
    en: str | None = Field(None, max_length=500)


class RaiseAlert(BaseModel):
    reasons: list[Reason] = Field(min_length=1, max_length=20)


@router.get(
    "/alerts",
    summary="Critical alerts in the user's scope: unacknowledged first (oldest first), with age",
    description=(
        "Readers and supervisors see the alerts of their pool; technicians those of their own "
        "institution's studies; administrators all. `unacknowledged=true` is the supervisors' "
        "list of values nobody has taken yet."
    ),
)
def get_alerts(
    user: CurrentUser,
    session: DbSession,
    unacknowledged: Annotated[bool | None, Query()] = None,
    study_uid: Annotated[str | None, Query(max_length=64, pattern=r"^[0-9.]+$")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> AlertPage:
    return alerts.list_alerts(
        session,
        user,
        unacknowledged=unacknowledged,
        study_uid=study_uid,
        limit=limit,
        offset=offset,
    )


@router.get("/alerts/{alert_id}", summary="One critical alert", responses=_RESPONSES)
def get_alert(
    alert_id: Annotated[int, Path(ge=1)], user: CurrentUser, session: DbSession
) -> AlertView:
    return alerts.get_alert(session, user, alert_id)


@router.post(
    "/alerts/{alert_id}/acknowledge",
    summary="Record that a named person received the critical value",
    responses=_RESPONSES,
    response_model=AlertView,
)
def post_acknowledge(
    alert_id: Annotated[int, Path(ge=1)],
    body: Acknowledgement,
    user: CurrentUser,
    session: DbSession,
) -> Any:
    return alerts.acknowledge(session, user, alert_id, name=body.name, note=body.note)


@router.post(
    "/studies/{study_uid}/alerts",
    summary="Raise a critical alert while reading (a reader of the study's pool)",
    status_code=status.HTTP_201_CREATED,
    responses=_RESPONSES,
    response_model=AlertView,
)
def post_study_alert(
    study_uid: StudyUID, body: RaiseAlert, user: CurrentUser, session: DbSession
) -> Any:
    reasons = [{"code": r.code, "zh": r.text, "en": r.en or r.text} for r in body.reasons]
    return alerts.raise_alert(session, user, study_uid, reasons)
