"""FastAPI dependencies: the install's settings and resources, a DB session, the current user.

Everything comes from ``app.state`` (filled by :func:`remote_dx.api.app.create_app`), never from
module globals, so two apps with different settings can live in one process (tests do that).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import psycopg
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy import bindparam, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from remote_dx.api.security import (
    AuthenticationError,
    TokenClaims,
    decode_access_token,
    token_is_revoked,
)
from remote_dx.core.models import Institution, Role, User, WorklistVersion
from remote_dx.core.psycopg_statements import PsycopgQuery, autocommitting
from remote_dx.core.settings import Settings
from remote_dx.storage.base import ObjectStore

log = logging.getLogger(__name__)

TOKEN_URL = "/api/v1/auth/token"
T = TypeVar("T")
R = TypeVar("R")

# auto_error=False: a missing header gets our own message instead of FastAPI's "Not authenticated".
_bearer = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)


# Plain reads of app.state are ``async def``: FastAPI runs a ``def`` dependency in its thread
# pool, a hop that costs more CPU than the dependency itself.
async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> ObjectStore:
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


# Built once (its cache key too): it runs on every authenticated request. The change counter of
# the user's pool comes along (NULL where there is none): a reader's worklist page needs it read
# before the page, and one statement is one round trip less on the busiest read.
_USER_WITH_CODE = (
    select(User, Institution.code, WorklistVersion.version)
    .outerjoin(Institution, Institution.id == User.institution_id)
    .outerjoin(WorklistVersion, WorklistVersion.pool_id == User.institution_id)
    .where(User.id == bindparam("user_id"))
)


def _user_from_bearer(request: Request, session: Session, token: str) -> User:
    if _signed_in_by_oidc(request, token):
        from remote_dx.api.oidc import OIDCError

        try:
            username = request.app.state.oidc.username_of(token)
        except OIDCError as exc:
            raise unauthorized(f"invalid token: {exc}") from exc
        user = session.query(User).filter(User.username == username).one_or_none()
        if user is None:
            raise unauthorized("invalid token: no local user for this sign-in")
        request.state.pool_version = None  # not read here: such a user's pages are not kept
        return user
    claims = _claims_of(request, token)
    # The user with its institution's code, in one query: the audit record needs the code and
    # would otherwise look it up again.
    row = session.execute(_USER_WITH_CODE, {"user_id": claims.user_id}).first()
    if row is None:
        raise unauthorized("invalid token: unknown user")
    return _admitted(request, claims, row[0], row[1], row[2])


def _claims_of(request: Request, token: str) -> TokenClaims:
    early = getattr(request.state, "bearer_claims", None)
    if early is not None and early[0] == token:
        return early[1]  # checked_token decoded it already
    try:
        return decode_access_token(
            token, secret=request.app.state.jwt_secret, settings=request.app.state.settings
        )
    except AuthenticationError as exc:
        raise unauthorized(str(exc)) from exc


def _admitted(
    request: Request, claims: TokenClaims, user: User, code: str | None, version: int | None
) -> User:
    """``user`` if the token's claims still hold for it, noted for the audit record (with its
    institution's ``code``) and the worklist (its pool's change counter)."""
    if user.username != claims.username:
        raise unauthorized("invalid token: unknown user")
    if token_is_revoked(user, claims):
        raise unauthorized("token has been revoked; log in again")
    request.state.audit_institution = (user.institution_id, code)
    request.state.pool_version = version
    return user


def _signed_in_by_oidc(request: Request, token: str) -> bool:
    oidc = getattr(request.app.state, "oidc", None)
    return oidc is not None and oidc.claims_token(token)


BearerToken = Annotated[str | None, Depends(_bearer)]


def current_user(request: Request, session: DbSession, token: BearerToken) -> User:
    """The active user the bearer token names, else 401.

    The user row is read on every request so that disabling an account, a password reset or a
    role change takes effect at once. The user is also noted on ``request.state`` for the audit
    trail (:mod:`remote_dx.api.audit`).
    """
    return authenticate(request, session, token)


async def checked_token(request: Request, token: BearerToken) -> str:
    """The bearer token, refused with 401 here when it is missing or not a valid token of ours
    (signature, expiry), so that these answers come before any parameter validation, as with
    :func:`current_user`. Whether its user may still act is :func:`authenticate`'s question."""
    if not token:
        raise unauthorized("not authenticated: send 'Authorization: Bearer <token>'")
    oidc = getattr(request.app.state, "oidc", None)
    if oidc is not None and oidc.claims_token(token):
        return token  # checked against the provider's keys by authenticate
    settings = request.app.state.settings
    try:
        claims = decode_access_token(token, secret=request.app.state.jwt_secret, settings=settings)
    except AuthenticationError as exc:
        raise unauthorized(str(exc)) from exc
    request.state.bearer_claims = (token, claims)
    return token


CheckedToken = Annotated[str, Depends(checked_token)]


# Hot reads run at most this many at a time per process, per kind: fewer than the request pool's
# 10 connections, so they never open overflow connections (each a PostgreSQL backend forked for
# one request and closed after it: more CPU than the request), and no more threads contend for
# the GIL than the two cores can serve; the others wait their turn on the event loop, first come
# first served. Neither waits in its thread for its audit record's commit
# (AuditedAnswer.when_written), and on PostgreSQL a study view's thread is three statements on
# psycopg's own cursor: two at a time keep a process's share of the cores busy. Closed loop of 50
# clients, interleaved runs (session 11): p99 76-96 ms at 2 in four runs out of four, against
# 90-116 ms at 4 and 111-132 ms at 3, with the same throughput within the runs' noise
# (888-1,066 studies/s at 2). A worklist page is mostly answered from a kept page, pure CPU, so
# more threads only take the GIL from the event loop and each other (four runs each: p99 86-106
# ms at 8, 59-83 ms at 2).
HOT_READS_AT_ONCE = {"study": 2, "worklist": 2}


# A pool of threads per kind and process: any event loop may hand work to it (a test client runs
# a loop per request, in its own thread), and it takes the work first come, first served.
_hot_read_threads: dict[tuple[int, str], ThreadPoolExecutor] = {}
_hot_read_threads_guard = threading.Lock()


def _threads_for(kind: str) -> ThreadPoolExecutor:
    key = (os.getpid(), kind)  # a forked child has the dict but not the threads
    threads = _hot_read_threads.get(key)
    if threads is None:
        with _hot_read_threads_guard:
            threads = _hot_read_threads.get(key)
            if threads is None:
                threads = _hot_read_threads[key] = ThreadPoolExecutor(
                    HOT_READS_AT_ONCE[kind], thread_name_prefix=f"hot-read-{kind}"
                )
    return threads


async def run_hot(kind: str, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in a worker thread, at most ``HOT_READS_AT_ONCE[kind]`` at a time.

    Handed over with the event loop's own ``run_in_executor``, not anyio's ``to_thread``:
    anyio's hand-off (a capacity limiter, a cancel scope, run variables) was ~10 % of a study
    view's time holding the GIL (py-spy ``--gil``, session 11). The caller's context variables
    go along (the request id of the log lines), as with anyio.

    ``function`` reads through :func:`hot_cursor` or :func:`hot_read`, whose pool does not ping
    a connection before lending it: when one turns out dead (PostgreSQL restarted), nothing was
    written on it and the pool has dropped it and its peers, so the read runs once more on a
    fresh connection.
    """
    loop = asyncio.get_running_loop()
    threads = _threads_for(kind)
    try:
        return await loop.run_in_executor(threads, contextvars.copy_context().run, function, *args)
    except (DBAPIError, DeadConnection) as exc:
        if isinstance(exc, DBAPIError) and not exc.connection_invalidated:
            raise
        log.warning("hot read %s found a dead database connection; reading again", kind)
    return await loop.run_in_executor(threads, contextvars.copy_context().run, function, *args)


@contextmanager
def hot_read(request: Request, *, one_statement_each: bool = False) -> Iterator[Session]:
    """A session for a hot read (worklist page, study) that ends with COMMIT, not a rollback,
    from the hot reads' own pool (:func:`remote_dx.core.db.get_hot_read_sessionmaker`; call it
    in :func:`run_hot`, which reads again after a dead connection).

    psycopg drops every statement it has prepared on a connection when a transaction there is
    rolled back, and a session closed without a commit rolls back: so each request's
    statements were parsed and planned afresh. A read-only transaction's COMMIT writes
    nothing, and the prepared statements stay for the connection's next requests. An error
    still rolls back.

    With ``one_statement_each``, on PostgreSQL, there is no transaction around the statements
    at all (autocommit): nothing to commit, so no COMMIT round trip. Under READ COMMITTED each
    statement of a transaction sees its own snapshot anyway, so a reader that needs no SET
    LOCAL (:func:`remote_dx.worklist.service.plan_joins_as_written`) and writes nothing reads
    the same rows either way.
    """
    with request.app.state.hot_read_sessions() as session:
        if one_statement_each and session.get_bind().dialect.name == "postgresql":
            session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session
        session.commit()


def authenticate(request: Request, session: Session, token: str | None) -> User:
    """:func:`current_user` for endpoints that do their work in one thread-pool call: the hot
    reads (worklist page, study) take the token with :data:`CheckedToken` and call this in that
    call, instead of paying a thread hop per dependency (session, user, endpoint, answer)."""
    if not token:
        raise unauthorized("not authenticated: send 'Authorization: Bearer <token>'")
    return _active(request, _user_from_bearer(request, session, token))


def _active(request: Request, user: User) -> User:
    if not user.active:
        raise unauthorized("this account is disabled; ask an administrator")
    request.state.audit_user = (user.id, user.username, Role(user.role).value, user.institution_id)
    return user


# -- hot reads through psycopg's own cursor (PostgreSQL) --------------------------------------

_PG_USER_WITH_CODE = PsycopgQuery(_USER_WITH_CODE, "UserWithCode")
# The user's row as the mapped attributes of a User (same names as its columns' keys).
_USER_FIELDS = {p.columns[0].key: p.key for p in sa_inspect(User).column_attrs}


class DeadConnection(Exception):
    """A pooled connection the server had closed (it restarted): nothing was read on it."""


@contextmanager
def hot_cursor(request: Request, token: str) -> Iterator[psycopg.Cursor[Any] | None]:
    """On PostgreSQL, a cursor of psycopg's own on a connection of the hot reads' pool, in
    autocommit, for :class:`~remote_dx.core.psycopg_statements.PsycopgQuery` reads; None on
    SQLite or for a token of an OIDC sign-in (its user is found by name): then use
    :func:`hot_read`.

    A study view's three statements through SQLAlchemy (the ORM's user load, the Core
    execution of the study and its series, the session around them) cost more CPU than
    PostgreSQL spent answering them: through the cursor the API's CPU per view went from
    ~1.65-2.0 ms to ~1.2 ms (closed loop of 50 clients, session 11). The statements are the
    same ones, compiled once, and their rows get SQLAlchemy's result processing.

    Autocommit: each statement sees its own snapshot, as under READ COMMITTED in a
    transaction, and there is no COMMIT round trip. A connection found dead raises
    :class:`DeadConnection` once the pool is renewed, for :func:`run_hot` to read again.
    """
    engine = request.app.state.hot_read_sessions.kw["bind"]
    if engine.dialect.name != "postgresql" or _signed_in_by_oidc(request, token):
        yield None
        return
    pooled = engine.raw_connection()
    connection: psycopg.Connection[Any] = pooled.driver_connection  # type: ignore[assignment]
    try:
        with autocommitting(connection), connection.cursor() as cursor:
            yield cursor
    except psycopg.OperationalError as exc:
        if not (connection.broken or connection.closed):
            raise
        pooled.invalidate(exc)
        # Its peers were opened before the restart too: a new pool, as after a pre-ping failure.
        engine.dispose()
        raise DeadConnection(str(exc)) from exc
    finally:
        pooled.close()


def authenticate_by_cursor(request: Request, cursor: psycopg.Cursor[Any], token: str) -> User:
    """:func:`authenticate` through :func:`hot_cursor`'s cursor: the same statement and checks;
    the user is a transient User made of its row (nothing here loads more of it)."""
    claims = _claims_of(request, token)
    return _user_of_row(
        request, claims, _PG_USER_WITH_CODE.first(cursor, {"user_id": claims.user_id})
    )


def _user_of_row(request: Request, claims: TokenClaims, row: Any | None) -> User:
    if row is None:
        raise unauthorized("invalid token: unknown user")
    user = User(**{attribute: getattr(row, key) for key, attribute in _USER_FIELDS.items()})
    user = _active(request, _admitted(request, claims, user, row.code, row.version))
    _last_scopes[user.id] = (user.role, user.institution_id)
    return user


# The role and institution each user had at their last hot read in this process: what
# authenticate_pipelined sends a dependent read for, in the same round trip as the user's row.
_last_scopes: dict[int, tuple[str, int | None]] = {}


def authenticate_pipelined(
    request: Request,
    cursor: psycopg.Cursor[Any],
    token: str,
    start_read: Callable[[psycopg.Connection[Any], str, int | None], R],
) -> tuple[User, R | None]:
    """:func:`authenticate_by_cursor` with a read that depends on the user's role and
    institution (``start_read(connection, role, institution_id)``, which sends its statements)
    in one pipelined round trip instead of one after the other.

    The read is sent for the role and institution the user had at their last hot read in this
    process, before the user's row is checked. It is returned only if the fresh row passed
    every check and still has that role and institution; otherwise (the first read of a user
    here, a changed role or institution) it is None and the caller reads again for the user it
    got. Nothing of it is used before the user is known to be who may see it.
    """
    claims = _claims_of(request, token)
    scope = _last_scopes.get(claims.user_id)
    if scope is None:
        return authenticate_by_cursor(request, cursor, token), None
    connection = cursor.connection
    with connection.pipeline():
        user_row = _PG_USER_WITH_CODE.start(connection, {"user_id": claims.user_id})
        started = start_read(connection, *scope)
    user = _user_of_row(request, claims, user_row.first())
    return user, started if (user.role, user.institution_id) == scope else None


CurrentUser = Annotated[User, Depends(current_user)]


def require_roles(*roles: Role) -> Callable[[User], User]:
    """A dependency that lets only these roles through (403 for the others)."""
    allowed = frozenset(roles)
    names = ", ".join(sorted(r.value for r in allowed))

    async def check(user: CurrentUser) -> User:  # no I/O: no thread-pool hop
        if Role(user.role) not in allowed:
            raise HTTPException(
                status_code=status.HTTP_403_FORBIDDEN,
                detail=f"a {Role(user.role).value} may not do this; it needs one of: {names}",
            )
        return user

    return check


# Who may see patient data at all (scoping by institution and pool still applies on top).
PATIENT_DATA_ROLES = (Role.TECHNICIAN, Role.READER, Role.SENIOR_READER, Role.SUPERVISOR, Role.ADMIN)
READING_ROLES = (Role.READER, Role.SENIOR_READER, Role.SUPERVISOR)

AdminUser = Annotated[User, Depends(require_roles(Role.ADMIN))]
# Router-level: ``APIRouter(..., dependencies=[PATIENT_DATA])`` refuses statisticians with 403.
PATIENT_DATA = Depends(require_roles(*PATIENT_DATA_ROLES))
