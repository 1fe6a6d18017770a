"""User management for administrators: list, create, disable, enable, reset a password, unlock.

Disabling a user or resetting their password revokes every token they hold at once (access
tokens by the per-user cut-off, refresh tokens by their rows); each change is an audit event
(``admin``) naming the target.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Path, Request, status
from pydantic import BaseModel, Field
from sqlalchemy import select

from remote_dx.api.audit import note
from remote_dx.api.deps import AdminUser, DbSession
from remote_dx.api.security import revoke_all_tokens, unlock_user
from remote_dx.core.errors import Conflict, Invalid, NotFound
from remote_dx.core.models import Institution, LoginThrottle, Role, User
from remote_dx.core.security import hash_password

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])

Username = Annotated[str, Path(min_length=1, max_length=64)]
MIN_PASSWORD = 10


class UserView(BaseModel):
    username: str
    full_name: str
    role: Role
    institution: str
    modalities: list[str]
    title: str | None
    sections: list[str]
    active: bool
    locked: bool


class NewUser(BaseModel):
    username: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    full_name: str = Field(min_length=1, max_length=200)
    role: Role
    institution: str = Field(description="institution code, e.g. XXXRMYY")
    password: str = Field(min_length=MIN_PASSWORD, max_length=200)
    modalities: list[str] = []
    title: str | None = None
    sections: list[str] = []


class PasswordReset(BaseModel):
    password: str | None = Field(
        None,
        min_length=MIN_PASSWORD,
        max_length=200,
        description="the new password; omitted: a random one is made and returned once",
    )


class PasswordResetDone(BaseModel):
    username: str
    password: str | None = None  # only when generated


def _view(session: DbSession, user: User) -> UserView:
    lock = session.get(LoginThrottle, f"user:{user.username.casefold()}")
    from remote_dx.core.clock import utcnow

    return UserView(
        username=user.username,
        full_name=user.full_name,
        role=Role(user.role),
        institution=user.institution.code,
        modalities=list(user.modalities or []),
        title=user.title,
        sections=list(user.sections or []),
        active=user.active,
        locked=bool(lock and lock.locked_until and lock.locked_until > utcnow()),
    )


def _user(session: DbSession, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"no user {username!r}")
    return user


@router.get("/users", summary="All users, with their role, institution and state")
def list_users(_admin: AdminUser, session: DbSession) -> list[UserView]:
    return [_view(session, u) for u in session.scalars(select(User).order_by(User.username))]


@router.get("/users/{username}", summary="One user")
def read_user(username: Username, _admin: AdminUser, session: DbSession) -> UserView:
    return _view(session, _user(session, username))


@router.post("/users", summary="Create a user", status_code=status.HTTP_201_CREATED)
def create_user(body: NewUser, request: Request, admin: AdminUser, session: DbSession) -> UserView:
    note(
        request,
        action="admin",
        object_type="user",
        object_id=body.username,
        detail={"change": "create", "role": body.role.value, "institution": body.institution},
    )
    if session.scalar(select(User.id).where(User.username == body.username)) is not None:
        raise Conflict(f"user {body.username!r} exists already")
    institution = session.scalar(select(Institution).where(Institution.code == body.institution))
    if institution is None:
        raise Invalid(f"no institution with code {body.institution!r}")
    user = User(
        username=body.username,
        full_name=body.full_name,
        password_hash=hash_password(body.password),
        role=body.role,
        institution_id=institution.id,
        modalities=body.modalities,
        title=body.title,
        sections=body.sections,
        active=True,
    )
    session.add(user)
    session.commit()
    return _view(session, user)


def _set_active(request: Request, admin: User, session: DbSession, username: str, active: bool):
    note(
        request,
        action="admin",
        object_type="user",
        object_id=username,
        detail={"change": "enable" if active else "disable"},
    )
    user = _user(session, username)
    if not active and user.id == admin.id:
        raise Conflict("an administrator cannot disable their own account")
    user.active = active
    if not active:
        revoke_all_tokens(session, user)
    session.commit()
    return _view(session, user)


@router.post("/users/{username}/disable", summary="Disable: every token of the user stops now")
def disable_user(
    username: Username, request: Request, admin: AdminUser, session: DbSession
) -> UserView:
    return _set_active(request, admin, session, username, False)


@router.post("/users/{username}/enable", summary="Enable a disabled user (they log in anew)")
def enable_user(
    username: Username, request: Request, admin: AdminUser, session: DbSession
) -> UserView:
    return _set_active(request, admin, session, username, True)


@router.post(
    "/users/{username}/password",
    summary="Reset a password (and revoke the user's tokens); omit it to get a random one",
)
def reset_password(
    username: Username,
    body: PasswordReset,
    request: Request,
    _admin: AdminUser,
    session: DbSession,
) -> PasswordResetDone:
    note(
        request,
        action="admin",
        object_type="user",
        object_id=username,
        detail={"change": "password-reset"},
    )
    user = _user(session, username)
    generated = None if body.password else secrets.token_urlsafe(12)
    user.password_hash = hash_password(body.password or generated or "")
    revoke_all_tokens(session, user)
    unlock_user(session, user.username)
    session.commit()
    return PasswordResetDone(username=user.username, password=generated)


@router.post("/users/{username}/unlock", summary="Lift a login lock-out of the user")
def unlock(username: Username, request: Request, _admin: AdminUser, session: DbSession) -> UserView:
    note(
        request, action="admin", object_type="user", object_id=username, detail={"change": "unlock"}
    )
    user = _user(session, username)
    unlock_user(session, user.username)
    session.commit()
    return _view(session, user)
