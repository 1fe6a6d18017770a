"""FastAPI dependencies: the install's settings and resources, a DB session, the current user.

Everything comes from ``app.state`` (filled by :func:`remote_dx.api.app.create_app`), never from
module globals, so two apps with different settings can live in one process (tests do that).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.orm import Session

from remote_dx.api.security import AuthenticationError, decode_access_token
from remote_dx.core.models import User
from remote_dx.core.settings import Settings
from remote_dx.storage.base import ObjectStore

TOKEN_URL = "/api/v1/auth/token"

# auto_error=False: a missing header gets our own message instead of FastAPI's "Not authenticated".
_bearer = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> ObjectStore:
    return request.app.state.store


def get_session(request: Request) -> Iterator[Session]:
    """A session for one request; endpoints that write commit themselves."""
    with request.app.state.sessions() as session:
        yield session


DbSession = Annotated[Session, Depends(get_session)]
AppSettings = Annotated[Settings, Depends(get_app_settings)]
Store = Annotated[ObjectStore, Depends(get_store)]


def unauthorized(message: str) -> HTTPException:
    # RFC 6750 §3: a 401 names the scheme the client should use.
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=message,
        headers={"WWW-Authenticate": "Bearer"},
    )


def current_user(
    request: Request,
    session: DbSession,
    token: Annotated[str | None, Depends(_bearer)],
) -> User:
    """The active user the bearer token names, else 401.

    The user row is read on every request so that disabling an account takes effect at once.
    """
    if not token:
        raise unauthorized("not authenticated: send 'Authorization: Bearer <token>'")
    try:
        claims = decode_access_token(
            token, secret=request.app.state.jwt_secret, settings=request.app.state.settings
        )
    except AuthenticationError as exc:
        raise unauthorized(str(exc)) from exc
    user = session.get(User, claims.user_id)
    if user is None or user.username != claims.username:
        raise unauthorized("invalid token: unknown user")
    if not user.active:
        raise unauthorized("this account is disabled; ask an administrator")
    return user


CurrentUser = Annotated[User, Depends(current_user)]
