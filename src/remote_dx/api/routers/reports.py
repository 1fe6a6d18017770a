"""Reports: templates, the study's report with its versions, draft autosave, sign, confirm
(second signature) and amend. Logic lives in :mod:`remote_dx.reporting.service`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Request
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from remote_dx.api.deps import CurrentUser, DbSession
from remote_dx.core.models import User
from remote_dx.reporting import service
from remote_dx.reporting.errors import ReportConflict
from remote_dx.reporting.keys import HubKey, load_signing_key
from remote_dx.reporting.schemas import (
    AmendBody,
    ConfirmBody,
    DraftBody,
    ReportView,
    SignBody,
    TemplateView,
)

router = APIRouter(prefix="/api/v1", tags=["reports"])

StudyUID = Annotated[
    str, Path(min_length=1, max_length=64, pattern=r"^[0-9.]+$", description="Study Instance UID")
]

ERRORS = {
    403: {"description": "Not a qualified reader of the study's pool (or a junior confirming)"},
    404: {"description": "No such study, or not visible to this user"},
    409: {"description": "The report's state or the study's lease does not allow this now"},
    422: {"description": "Invalid content (e.g. empty impression, no reason, unknown template)"},
}


def signing_key(request: Request) -> HubKey:
    return load_signing_key(request.app.state.settings)


Key = Annotated[HubKey, Depends(signing_key)]


def _apply(
    session: Session, user: User, study_uid: str, key: HubKey, step: Callable[[], object]
) -> ReportView:
    """Run one step on the report, commit it, and answer the report as it now stands.

    A refusal of the service (ReportError) reaches the API's ServiceError handler; the request's
    session is closed, and so rolled back, on the way out.
    """
    try:
        step()
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        # Two signatures of one report raced (SQLite has no row locks): one version number, one
        # report per study — the loser is told to look again.
        raise ReportConflict("the report changed meanwhile; reload it and retry") from exc
    return service.report_view(session, user, study_uid, key=key)


@router.get("/report-templates", summary="Report templates per exam, with their defaults")
def templates(_user: CurrentUser) -> list[TemplateView]:
    return service.template_views()


@router.get(
    "/studies/{study_uid}/report",
    summary="The study's report: status, all signed versions, the draft for the pool's readers",
    responses={404: ERRORS[404]},
)
def read_report(study_uid: StudyUID, user: CurrentUser, session: DbSession, key: Key) -> ReportView:
    return service.report_view(session, user, study_uid, key=key)


@router.put(
    "/studies/{study_uid}/report/draft",
    summary="Autosave the draft (the lease holder only; renews nothing)",
    responses=ERRORS,
)
def put_draft(
    study_uid: StudyUID, body: DraftBody, user: CurrentUser, session: DbSession, key: Key
) -> ReportView:
    return _apply(
        session,
        user,
        study_uid,
        key,
        lambda: service.save_draft(
            session,
            user,
            study_uid,
            content=body.content,
            template=body.template,
            base_revision=body.base_revision,
        ),
    )


@router.post(
    "/studies/{study_uid}/report/sign",
    summary="Sign: final, or preliminary for a junior where a second signature is required",
    description="Body optional: without `content` the saved draft is signed.",
    responses=ERRORS,
)
def sign(
    study_uid: StudyUID,
    user: CurrentUser,
    session: DbSession,
    key: Key,
    body: Annotated[SignBody | None, Body()] = None,
) -> ReportView:
    body = body or SignBody()
    return _apply(
        session,
        user,
        study_uid,
        key,
        lambda: service.sign(
            session, user, study_uid, key=key, template=body.template, content=body.content
        ),
    )


@router.post(
    "/studies/{study_uid}/report/confirm",
    summary="Second signature: a senior reader makes the preliminary report final",
    responses=ERRORS,
)
def confirm(
    study_uid: StudyUID,
    user: CurrentUser,
    session: DbSession,
    key: Key,
    body: Annotated[ConfirmBody | None, Body()] = None,
) -> ReportView:
    body = body or ConfirmBody()
    return _apply(
        session,
        user,
        study_uid,
        key,
        lambda: service.confirm(session, user, study_uid, key=key, content=body.content),
    )


@router.post(
    "/studies/{study_uid}/report/amend",
    summary="Amend a signed report: a new signed version with the reason; old versions stay",
    responses=ERRORS,
)
def amend(
    study_uid: StudyUID, body: AmendBody, user: CurrentUser, session: DbSession, key: Key
) -> ReportView:
    return _apply(
        session,
        user,
        study_uid,
        key,
        lambda: service.amend(
            session, user, study_uid, key=key, content=body.content, reason=body.reason
        ),
    )
