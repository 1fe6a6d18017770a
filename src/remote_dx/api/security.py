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
import hashlib
import logging
import os
import secrets
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from remote_dx.core.clock import utcnow
from remote_dx.core.models import LoginThrottle, RefreshToken, User
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
    issued_at_ms: int = 0


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
        # Millisecond issue time: "refused if issued before the cut-off" must not round a token
        # made in the same second as a password reset to the safe side.
        "iat_ms": int(now.timestamp() * 1000),
    }
    token = jwt.encode(claims, secret, algorithm=settings.jwt_algorithm)
    return IssuedToken(access_token=token, expires_in=int(lifetime.total_seconds()))


# Tokens whose signature, issuer and type were already checked, with their claims, per
# (token, secret, algorithm). A reader's screen sends the same token with every request, and
# checking its HMAC signature (pyjwt prepares the key each time) cost ~0.25 ms of each hot read.
# Only the expiry depends on time: it is checked on every use. Bounded; cleared when full.
_VERIFIED_MAX = 4096
_verified: dict[tuple[str, str, str], TokenClaims] = {}


def decode_access_token(token: str, *, secret: str, settings: Settings) -> TokenClaims:
    """Check signature, issuer, type and expiry; raise :class:`AuthenticationError` if any fails.

    Expiry is checked against :func:`remote_dx.core.clock.utcnow` rather than by pyjwt, so the
    project's one clock (movable in tests) governs token lifetime like every other deadline; for
    the same reason pyjwt's "issued in the future" check (real clock) is off.
    """
    key = (token, secret, settings.jwt_algorithm)
    claims = _verified.get(key)
    if claims is None:
        claims = _verify_access_token(token, secret=secret, algorithm=settings.jwt_algorithm)
        if len(_verified) >= _VERIFIED_MAX:
            _verified.clear()
        _verified[key] = claims
    if claims.expires_at <= utcnow():
        raise AuthenticationError("token has expired; log in again")
    return claims


def _verify_access_token(token: str, *, secret: str, algorithm: str) -> TokenClaims:
    """The claims of a token whose signature, issuer and type are ours (expiry not checked)."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[algorithm],
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
    return TokenClaims(
        user_id=user_id,
        username=str(claims.get("name", "")),
        issued_at=issued_at,
        expires_at=expires_at,
        token_id=str(claims.get("jti", "")),
        issued_at_ms=int(claims.get("iat_ms") or int(claims["iat"]) * 1000),
    )


def token_is_revoked(user: User, claims: TokenClaims) -> bool:
    """True if the user's tokens were cut off (disable, password reset) after this one was made."""
    cutoff = user.tokens_valid_after
    if cutoff is None:
        return False
    return claims.issued_at_ms < int(cutoff.timestamp() * 1000)


def revoke_all_tokens(session: Session, user: User) -> int:
    """Make every access and refresh token of ``user`` stop working now (caller commits)."""
    now = utcnow()
    user.tokens_valid_after = now
    result = session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)


# -- refresh tokens (RFC 6749 §6, rotation per RFC 9700 §4.14.2) ---------------------------------


@dataclass(frozen=True)
class IssuedRefresh:
    refresh_token: str
    expires_in: int


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_refresh_token(
    session: Session, user: User, *, settings: Settings, family: str | None = None
) -> IssuedRefresh:
    """A new opaque refresh token; only its SHA-256 is kept (caller commits)."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    lifetime = timedelta(minutes=settings.refresh_token_minutes)
    session.add(
        RefreshToken(
            token_hash=_digest(token),
            family=family or uuid.uuid4().hex,
            user_id=user.id,
            issued_at=now,
            expires_at=now + lifetime,
        )
    )
    return IssuedRefresh(token, int(lifetime.total_seconds()))


def rotate_refresh_token(
    session: Session, token: str, *, settings: Settings
) -> tuple[User, IssuedRefresh]:
    """Spend ``token`` and hand out its successor (same family), else :class:`AuthenticationError`.

    A token that was already spent is a replay (stolen, or a client bug): the whole family is
    revoked, so neither the thief nor the victim can go on without logging in again. The spend
    is a conditional UPDATE, so two concurrent uses of one token cannot both succeed.
    """
    row = session.scalar(select(RefreshToken).where(RefreshToken.token_hash == _digest(token)))
    now = utcnow()
    if row is None:
        raise AuthenticationError("invalid refresh token")
    if row.revoked_at is not None:
        raise AuthenticationError("refresh token has been revoked; log in again")
    if row.expires_at <= now:
        raise AuthenticationError("refresh token has expired; log in again")
    spent = session.execute(
        update(RefreshToken)
        .where(RefreshToken.id == row.id, RefreshToken.used_at.is_(None))
        .values(used_at=now)
    )
    if not getattr(spent, "rowcount", 0):
        session.execute(
            update(RefreshToken)
            .where(RefreshToken.family == row.family, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        session.commit()
        log.warning("refresh token of user %s replayed; its family is revoked", row.user_id)
        raise AuthenticationError("refresh token was already used; log in again")
    user = session.get(User, row.user_id)
    if user is None or not user.active:
        session.rollback()
        raise AuthenticationError("this account is disabled; ask an administrator")
    issued = issue_refresh_token(session, user, settings=settings, family=row.family)
    return user, issued


def revoke_refresh_family(session: Session, token: str, *, user_id: int) -> bool:
    """Log out: the token's whole family stops working (caller commits)."""
    row = session.scalar(select(RefreshToken).where(RefreshToken.token_hash == _digest(token)))
    if row is None or row.user_id != user_id:
        return False
    session.execute(
        update(RefreshToken)
        .where(RefreshToken.family == row.family, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return True


# -- login throttling and lock-out ---------------------------------------------------------------


class LoginLocked(AuthenticationError):
    """Too many failures: ``status_code`` 423 (account) or 429 (client address)."""

    def __init__(self, message: str, *, status_code: int, retry_after: int) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after


def _throttle_keys(username: str, address: str | None) -> list[tuple[str, int, int]]:
    """(key, failures allowed, HTTP status when locked) per throttled identity."""
    keys = [(f"user:{username.casefold()}"[:200], 0, 423)]
    if address:
        keys.append((f"addr:{address}"[:200], 1, 429))
    return keys


def check_login_allowed(session: Session, username: str, address: str | None) -> None:
    """Raise :class:`LoginLocked` while the username or the client address is locked out."""
    now = utcnow()
    for key, _, code in _throttle_keys(username, address):
        row = session.get(LoginThrottle, key)
        if row is not None and row.locked_until is not None and row.locked_until > now:
            wait = max(1, int((row.locked_until - now).total_seconds() + 0.999))
            what = "this account" if code == 423 else "logins from this address"
            raise LoginLocked(
                f"too many failed logins: {what} locked for {wait} more seconds",
                status_code=code,
                retry_after=wait,
            )


def record_login_failure(
    sessions: Callable[[], Session], username: str, address: str | None, *, settings: Settings
) -> None:
    """Count a failure per username and per address; lock the key when it reaches its limit.

    Failures older than the window no longer count. Written in a session of its own so the
    count survives whatever the login request does next.
    """
    limits = (settings.login_max_failures, settings.login_max_failures_per_address)
    window = timedelta(minutes=settings.login_failure_window_minutes)
    lockout = timedelta(minutes=settings.login_lockout_minutes)
    for key, which, _ in _throttle_keys(username, address):
        for _attempt in range(3):
            with sessions() as session:
                now = utcnow()
                row = session.get(LoginThrottle, key, with_for_update=True)
                if row is None:
                    row = LoginThrottle(key=key, failures=0, first_failure_at=now)
                    session.add(row)
                expired = row.locked_until is not None and row.locked_until <= now
                if expired or row.first_failure_at + window <= now:
                    row.failures, row.first_failure_at, row.locked_until = 0, now, None
                row.failures += 1
                if row.failures >= limits[which]:
                    row.locked_until = now + lockout
                try:
                    session.commit()
                    break
                except IntegrityError:
                    session.rollback()  # a concurrent failure created the row: count again


def clear_login_failures(session: Session, username: str) -> None:
    """A successful login forgives the username's failures (not the address's; caller commits)."""
    row = session.get(LoginThrottle, f"user:{username.casefold()}"[:200])
    if row is not None:
        session.delete(row)


def unlock_user(session: Session, username: str) -> None:
    clear_login_failures(session, username)
