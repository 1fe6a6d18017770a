"""Logins and bearer tokens: OAuth2 password grant (RFC 6749 §4.3) issuing JWTs (RFC 7519)
carried as bearer tokens (RFC 6750).

All processes of one install (``serve``, several ``api`` processes) must accept each other's
tokens, so they share one signing secret: ``RDX_JWT_SECRET`` when set, otherwise a random secret
generated once and kept in ``<data_dir>/jwt_secret`` (mode 0600).

A token only says who its bearer is; whether that user may still act is decided per request from
the database (an inactive user's tokens stop working at once, and a role change takes effect at
once), so no role or institution claim in a token is ever trusted for scoping.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
from sqlalchemy import select
from sqlalchemy.orm import Session

from remote_dx.core.clock import utcnow
from remote_dx.core.models import User
from remote_dx.core.security import hash_password, verify_password
from remote_dx.core.settings import Settings

log = logging.getLogger(__name__)

SECRET_FILE = "jwt_secret"
TOKEN_TYPE = "access"  # a "refresh" type can join later without old tokens being mistaken for it
ISSUER = "remote_dx"
_MIN_SECRET_LENGTH = 32


@functools.cache
def _dummy_hash() -> str:
    # Verifying a password against this hash when the username is unknown makes both failures
    # take the same time, so response timing does not tell which usernames exist.
    return hash_password(secrets.token_urlsafe(16))


class AuthenticationError(Exception):
    """Login or token refused; ``str(exc)`` is the message shown to the client."""


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int  # seconds


@dataclass(frozen=True)
class TokenClaims:
    user_id: int
    username: str
    issued_at: datetime
    expires_at: datetime
    token_id: str


def secret_path(settings: Settings) -> Path:
    return settings.data_dir / SECRET_FILE


def load_jwt_secret(settings: Settings) -> str:
    """The install's signing secret: ``settings.jwt_secret``, else the persisted one (created
    on first use).

    Creation is race-free between processes starting together: the secret is written to a
    private temporary file and published with ``os.link``, which fails if another process
    published first — in which case that process's secret is read and used.
    """
    if settings.jwt_secret:
        if len(settings.jwt_secret) < _MIN_SECRET_LENGTH:
            log.warning("RDX_JWT_SECRET is shorter than %d characters", _MIN_SECRET_LENGTH)
        return settings.jwt_secret
    path = secret_path(settings)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".jwt_secret-")  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(secrets.token_urlsafe(48))
                handle.flush()
                os.fsync(handle.fileno())
            # Losing the race is fine: the winner's secret is read below.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    secret = path.read_text(encoding="ascii").strip()
    if len(secret) < _MIN_SECRET_LENGTH:
        raise RuntimeError(
            f"{path} holds no usable JWT secret; delete it to have a new one generated "
            "(every issued token then becomes invalid) or set RDX_JWT_SECRET"
        )
    if path.stat().st_mode & 0o077:
        log.warning("%s is readable by other users; chmod 600 it", path)
    return secret


def authenticate(session: Session, username: str, password: str) -> User:
    """The active user with these credentials, else :class:`AuthenticationError`.

    Whether an account is disabled is told only to someone who knows its password.
    """
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        verify_password(_dummy_hash(), password)
        raise AuthenticationError("incorrect username or password")
    if not verify_password(user.password_hash, password):
        raise AuthenticationError("incorrect username or password")
    if not user.active:
        raise AuthenticationError("this account is disabled; ask an administrator")
    return user


def issue_access_token(user: User, *, secret: str, settings: Settings) -> IssuedToken:
    now = utcnow()
    lifetime = timedelta(minutes=settings.access_token_minutes)
    claims = {
        "iss": ISSUER,
        "sub": str(user.id),
        "name": user.username,
        "typ": TOKEN_TYPE,
        "iat": int(now.timestamp()),
        "exp": int((now + lifetime).timestamp()),
        "jti": uuid.uuid4().hex,
    }
    token = jwt.encode(claims, secret, algorithm=settings.jwt_algorithm)
    return IssuedToken(access_token=token, expires_in=int(lifetime.total_seconds()))


def decode_access_token(token: str, *, secret: str, settings: Settings) -> TokenClaims:
    """Check signature, issuer, type and expiry; raise :class:`AuthenticationError` if any fails.

    Expiry is checked against :func:`remote_dx.core.clock.utcnow` rather than by pyjwt, so the
    project's one clock (movable in tests) governs token lifetime like every other deadline; for
    the same reason pyjwt's "issued in the future" check (real clock) is off.
    """
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[settings.jwt_algorithm],
            issuer=ISSUER,
            options={
                "require": ["sub", "exp", "iat", "iss"],
                "verify_exp": False,
                "verify_iat": False,
            },
        )
        expires_at = datetime.fromtimestamp(int(claims["exp"]), UTC)
        issued_at = datetime.fromtimestamp(int(claims["iat"]), UTC)
        user_id = int(claims["sub"])
    except jwt.InvalidTokenError as exc:
        raise AuthenticationError(f"invalid token: {exc}") from exc
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        raise AuthenticationError("invalid token: malformed claims") from exc
    if claims.get("typ") != TOKEN_TYPE:
        raise AuthenticationError("invalid token: not an access token")
    if expires_at <= utcnow():
        raise AuthenticationError("token has expired; log in again")
    return TokenClaims(
        user_id=user_id,
        username=str(claims.get("name", "")),
        issued_at=issued_at,
        expires_at=expires_at,
        token_id=str(claims.get("jti", "")),
    )
