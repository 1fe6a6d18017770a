"""Login: the OAuth2 password grant (RFC 6749 §4.3) answering a short-lived bearer JWT and a
rotating refresh token (RFC 6749 §6); logout; optional OIDC sign-in (see docs/security.md).

Failed logins are counted per username and per client address: past the limit the account
answers 423 Locked, the address 429 Too Many Requests, both with ``Retry-After``. Every attempt
is an audit event (``login``, with its outcome).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, Field

from remote_dx.api.audit import note
from remote_dx.api.deps import AppSettings, CurrentUser, DbSession, unauthorized
from remote_dx.api.security import (
    AuthenticationError,
    LoginLocked,
    authenticate,
    check_login_allowed,
    clear_login_failures,
    issue_access_token,
    issue_refresh_token,
    record_login_failure,
    revoke_refresh_family,
    rotate_refresh_token,
)
from remote_dx.core.models import Role
from remote_dx.reporting.access import is_senior

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
    refresh_token: str
    refresh_expires_in: int


class Me(BaseModel):
    username: str
    full_name: str
    role: Role
    institution: str
    senior: bool = Field(
        description="May give the second signature (二级审核) to a preliminary report: a senior "
        "reader, or a reader titled 副主任医师/主任医师. The viewer offers the confirm button only "
        "then, so a junior is not shown an action that answers 403."
    )


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


@router.post(
    "/token",
    summary="Log in with username and password (form fields), get a bearer and a refresh token",
    responses={
        401: {"description": "Wrong credentials or disabled account"},
        423: {"description": "Account locked after too many failures (see Retry-After)"},
        429: {"description": "Too many failures from this address (see Retry-After)"},
    },
)
def login(
    request: Request,
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    session: DbSession,
    settings: AppSettings,
) -> TokenResponse:
    address = _client(request)
    note(request, action="login", username=form.username)
    try:
        check_login_allowed(session, form.username, address)
    except LoginLocked as exc:
        note(request, detail={"reason": "locked"})
        raise HTTPException(
            exc.status_code, str(exc), headers={"Retry-After": str(exc.retry_after)}
        ) from exc
    try:
        user = authenticate(session, form.username, form.password)
    except AuthenticationError as exc:
        session.rollback()
        record_login_failure(request.app.state.sessions, form.username, address, settings=settings)
        raise unauthorized(str(exc)) from exc
    note(request, user=user)
    clear_login_failures(session, user.username)
    access = issue_access_token(user, secret=request.app.state.jwt_secret, settings=settings)
    refresh = issue_refresh_token(session, user, settings=settings)
    session.commit()
    return TokenResponse(
        access_token=access.access_token,
        expires_in=access.expires_in,
        refresh_token=refresh.refresh_token,
        refresh_expires_in=refresh.expires_in,
    )


@router.post(
    "/refresh",
    summary="Trade a refresh token for a new access token and a new refresh token (rotation)",
    responses={401: {"description": "Unknown, expired, revoked or already used refresh token"}},
)
def refresh(
    request: Request,
    refresh_token: Annotated[str, Form(min_length=1, max_length=200)],
    session: DbSession,
    settings: AppSettings,
    grant_type: Annotated[Literal["refresh_token"], Form()] = "refresh_token",
) -> TokenResponse:
    note(request, action="refresh")
    try:
        user, issued = rotate_refresh_token(session, refresh_token, settings=settings)
    except AuthenticationError as exc:
        raise unauthorized(str(exc)) from exc
    note(request, user=user)
    access = issue_access_token(user, secret=request.app.state.jwt_secret, settings=settings)
    session.commit()
    return TokenResponse(
        access_token=access.access_token,
        expires_in=access.expires_in,
        refresh_token=issued.refresh_token,
        refresh_expires_in=issued.expires_in,
    )


@router.post("/logout", summary="Revoke a refresh token (and its rotations)", status_code=204)
def logout(
    request: Request,
    user: CurrentUser,
    refresh_token: Annotated[str, Form(min_length=1, max_length=200)],
    session: DbSession,
) -> None:
    note(request, action="logout")
    revoke_refresh_family(session, refresh_token, user_id=user.id)
    session.commit()


@router.get("/me", summary="Who the bearer token names")
def me(user: CurrentUser, session: DbSession) -> Me:
    return Me(
        username=user.username,
        full_name=user.full_name,
        role=Role(user.role),
        institution=user.institution.code,
        senior=is_senior(user),
    )
