"""Login: the OAuth2 password grant (RFC 6749 §4.3) answering a bearer JWT."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel

from remote_dx.api.deps import AppSettings, DbSession, unauthorized
from remote_dx.api.security import AuthenticationError, authenticate, issue_access_token

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


@router.post(
    "/token",
    summary="Log in with username and password (form fields), get a bearer token",
    responses={401: {"description": "Wrong credentials or disabled account"}},
)
def login(
    request: Request,
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    session: DbSession,
    settings: AppSettings,
) -> TokenResponse:
    try:
        user = authenticate(session, form.username, form.password)
    except AuthenticationError as exc:
        raise unauthorized(str(exc)) from exc
    issued = issue_access_token(user, secret=request.app.state.jwt_secret, settings=settings)
    return TokenResponse(access_token=issued.access_token, expires_in=issued.expires_in)
