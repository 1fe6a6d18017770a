"""The reading lease: one reader at a time holds a study, and the hold lapses if abandoned.

States of a :class:`WorklistItem` (``status``, ``claimed_by_id``, ``lease_expires_at``)::

    unread ──claim──▶ claimed ──draft saved──▶ drafted ──signed (final)──▶ signed
      ▲                 │  ▲                     │ ▲
      └──release/lapse──┘  └──renew (holder)     │ └── preliminary signature: lease cleared,
                                                 │     waits for a senior's claim
                         release/lapse ──────────┘ (stays drafted: the draft is kept)

- **claim**: a qualified reader of the item's pool (role reader/senior reader/supervisor, the
  study's modalities among ``User.modalities``, the item's section among ``User.sections``)
  takes the item if nobody holds an unexpired lease; claiming one's own item renews it. A study
  whose preliminary report awaits the second signature is claimed by senior readers only.
- **renew**: the holder extends the lease (draft autosave calls it).
- **release**: the holder, or a supervisor (administrator) of the pool, lets it go.
- **reassign**: a supervisor (administrator) hands it to a named qualified reader.
- **lapse**: :func:`expire_leases` (the periodic sweep) frees items whose lease ran out; a claim
  never waits for it — an expired lease counts as free.

Every change bumps ``WorklistItem.version`` with a compare-and-set
(``UPDATE … WHERE id = :id AND version = :seen``): of two readers racing for one item exactly one
wins, on SQLite (writers serialise; the loser's WHERE no longer matches) and on PostgreSQL (the
loser's UPDATE waits for the row lock, then re-checks the WHERE on the new row version).
Server-sent events (:mod:`remote_dx.api.routers.events`) notice changes through that version, so
every writer of ``worklist_items`` must bump it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, or_, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from remote_dx.core import errors
from remote_dx.core.clock import utcnow
from remote_dx.core.models import (
    Institution,
    Report,
    ReportStatus,
    Role,
    RoutingDecision,
    RoutingDecisionKind,
    Series,
    Study,
    User,
    WorklistItem,
    WorklistStatus,
)
from remote_dx.worklist.schemas import Holder, LeaseView, iso_utc
from remote_dx.worklist.service import READER_ROLES, visibility

log = logging.getLogger(__name__)

# Objects that travel with images but are not read on their own (PS3.3 C.7.3.1.1.1).
AUXILIARY_MODALITIES = frozenset({"PR", "KO", "SR", "DOC", "REG"})
SUPERVISING_ROLES = frozenset({Role.SUPERVISOR, Role.ADMIN})
_CAS_ATTEMPTS = 3


class LeaseError(errors.ServiceError):
    """A lease operation refused (``extra`` says who holds the item, for a 409)."""


class ItemNotFound(LeaseError, errors.NotFound):
    pass


class NotAllowed(LeaseError, errors.Forbidden):
    pass


class LeaseConflict(LeaseError, errors.Conflict):
    """Someone else holds the item, it is signed, or it kept changing under us."""


@dataclass(frozen=True)
class _Item:
    id: int
    study_pk: int
    study_uid: str
    pool_id: int
    pool_name: str
    section: str | None
    status: WorklistStatus
    priority: Any
    version: int
    claimed_by_id: int | None
    holder_username: str | None
    holder_name: str | None
    claimed_at: datetime | None
    lease_expires_at: datetime | None
    modalities: tuple[str, ...]

    def held_by_other(self, user_id: int, now: datetime) -> bool:
        return (
            self.claimed_by_id is not None
            and self.claimed_by_id != user_id
            and self.lease_expires_at is not None
            and self.lease_expires_at > now
        )

    def view(self) -> LeaseView:
        holder = None
        if self.claimed_by_id is not None and self.holder_username is not None:
            holder = Holder(username=self.holder_username, full_name=self.holder_name or "")
        return LeaseView(
            study_uid=self.study_uid,
            status=self.status,
            priority=self.priority,
            pool=self.pool_name,
            section=self.section,
            claimed_by=holder,
            claimed_at=self.claimed_at,
            lease_expires_at=self.lease_expires_at,
            version=self.version,
        )


_pool = aliased(Institution, name="pool")
_holder = aliased(User, name="holder")


def _series_modalities() -> ColumnElement[Any]:
    # Study.modalities is filled by processing; until then the series say what they are.
    return (
        select(func.min(Series.modality))
        .where(Series.study_pk == Study.id, Series.modality.is_not(None))
        .correlate(Study)
        .scalar_subquery()
    )


def _load(session: Session, user: User, study_uid: str) -> _Item:
    """The item as ``user`` may see it, else :class:`ItemNotFound` (absent and out of scope look
    the same, as for GET /studies)."""
    row = session.execute(
        select(
            WorklistItem.id,
            WorklistItem.study_pk,
            Study.study_uid,
            WorklistItem.pool_id,
            _pool.name,
            WorklistItem.section,
            WorklistItem.status,
            WorklistItem.priority,
            WorklistItem.version,
            WorklistItem.claimed_by_id,
            _holder.username,
            _holder.full_name,
            WorklistItem.claimed_at,
            WorklistItem.lease_expires_at,
            func.coalesce(Study.modalities, _series_modalities()),
        )
        .select_from(WorklistItem)
        .join(Study, Study.id == WorklistItem.study_pk)
        .join(_pool, _pool.id == WorklistItem.pool_id)
        .outerjoin(_holder, _holder.id == WorklistItem.claimed_by_id)
        .where(Study.study_uid == study_uid, visibility(user))
    ).one_or_none()
    if row is None:
        raise ItemNotFound(f"no worklist item for study {study_uid}")
    *fields, modalities = row
    wanted = tuple(m.strip().upper() for m in str(modalities or "").split("\\") if m.strip())
    return _Item(*fields, modalities=wanted)  # type: ignore[arg-type]


def qualification_problem(user: User, item: _Item) -> str | None:
    """Why ``user`` may not read ``item`` (None: qualified)."""
    role = Role(user.role)
    if role not in READER_ROLES:
        return f"a {role.value} does not read studies; only readers of the pool can claim"
    if not user.active:
        return f"{user.username} is disabled"
    if user.institution_id != item.pool_id:
        return f"{user.username} is not a reader of {item.pool_name}"
    own = {m.upper() for m in (user.modalities or [])}
    missing = sorted(m for m in item.modalities if m not in AUXILIARY_MODALITIES and m not in own)
    if missing:
        return f"{user.username} is not qualified to read {', '.join(missing)}"
    if item.section and item.section not in (user.sections or []):
        return f"{user.username} does not read for the {item.section} section"
    return None


def _is_supervisor_of(user: User, item: _Item) -> bool:
    role = Role(user.role)
    return role is Role.ADMIN or (role is Role.SUPERVISOR and user.institution_id == item.pool_id)


def _cas(session: Session, item: _Item, **values: Any) -> bool:
    """Apply ``values`` if the item is still at the version we read; bump the version."""
    result = session.execute(
        update(WorklistItem)
        .where(WorklistItem.id == item.id, WorklistItem.version == item.version)
        .values(version=WorklistItem.version + 1, **values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def _holder_message(item: _Item) -> LeaseConflict:
    until = item.lease_expires_at.isoformat() if item.lease_expires_at else "?"
    return LeaseConflict(
        f"study {item.study_uid} is being read by {item.holder_name} ({item.holder_username}) "
        f"until {until}",
        # Extras go into the 409 body as they are, so they are given in their wire form.
        claimed_by=Holder(
            username=item.holder_username or "", full_name=item.holder_name or ""
        ).model_dump(),
        lease_expires_at=iso_utc(item.lease_expires_at) if item.lease_expires_at else None,
    )


def _take(
    session: Session,
    actor: User,
    study_uid: str,
    reader: User,
    *,
    lease: timedelta,
    now: datetime,
    force: bool,
    decide: Any = None,
) -> LeaseView:
    """Give ``reader`` (already found qualified) the lease: shared by claim and reassign;
    ``force`` (reassign) takes it whoever holds it."""
    for _ in range(_CAS_ATTEMPTS):
        item = _load(session, actor, study_uid)
        if item.status is WorklistStatus.SIGNED:
            raise LeaseConflict(f"study {study_uid} is already signed")
        if not force and item.held_by_other(reader.id, now):
            raise _holder_message(item)
        same = item.claimed_by_id == reader.id
        values: dict[str, Any] = {
            "claimed_by_id": reader.id,
            "claimed_at": item.claimed_at if same and item.claimed_at else now,
            "lease_expires_at": now + lease,
        }
        if item.status is WorklistStatus.UNREAD:
            values["status"] = WorklistStatus.CLAIMED
        if _cas(session, item, **values):
            if decide is not None:
                decide(item)
            session.commit()
            return _load(session, actor, study_uid).view()
        session.rollback()  # someone changed it first: look again
    raise LeaseConflict(f"study {study_uid} kept changing; try again")


def claim(
    session: Session, user: User, study_uid: str, *, lease: timedelta, now: datetime | None = None
) -> LeaseView:
    """``user`` claims the study (or renews their own claim). Commits.

    Raises :class:`ItemNotFound` (404), :class:`NotAllowed` (403: technician, other pool,
    modality or section not among the reader's) or :class:`LeaseConflict` (409: held by another
    reader until ``lease_expires_at``, or signed).
    """
    now = now or utcnow()
    item = _load(session, user, study_uid)
    problem = qualification_problem(user, item) or _second_signature_problem(session, user, item)
    if problem is not None:
        raise NotAllowed(problem)
    view = _take(session, user, study_uid, user, lease=lease, now=now, force=False)
    log.info("study %s claimed by %s until %s", study_uid, user.username, view.lease_expires_at)
    return view


def _second_signature_problem(session: Session, user: User, item: _Item) -> str | None:
    """Why ``user`` may not claim a study whose preliminary report awaits a senior (None: may).

    A junior's preliminary signature leaves only the senior's second signature (二级审核) to do;
    another junior can read the report but do nothing with a lease except hold the senior off
    (confirming needs no other holder), so such a claim is refused rather than granted.
    """
    from remote_dx.reporting.access import is_senior  # reporting builds on the worklist

    if is_senior(user):
        return None
    status = session.scalar(select(Report.status).where(Report.study_pk == item.study_pk))
    if status is None or ReportStatus(status) is not ReportStatus.PRELIMINARY:
        return None
    return (
        f"the preliminary report of study {item.study_uid} awaits a senior reader's second "
        "signature (二级审核); a junior reader can read it but not claim it"
    )


def renew(
    session: Session, user: User, study_uid: str, *, lease: timedelta, now: datetime | None = None
) -> LeaseView:
    """The holder extends the lease to ``now + lease``. Commits.

    A holder whose lease lapsed but whom nobody replaced keeps the item (autosave after a pause
    must not lose it); if someone else holds it now, 409; if nobody does, 409 too — claim again.
    """
    now = now or utcnow()
    for _ in range(_CAS_ATTEMPTS):
        item = _load(session, user, study_uid)
        if item.claimed_by_id != user.id:
            if item.claimed_by_id is not None and item.held_by_other(user.id, now):
                raise _holder_message(item)
            raise LeaseConflict(f"you do not hold study {study_uid}; claim it first")
        if _cas(session, item, lease_expires_at=now + lease):
            session.commit()
            return _load(session, user, study_uid).view()
        session.rollback()
    raise LeaseConflict(f"study {study_uid} kept changing; try again")


def release(
    session: Session, user: User, study_uid: str, *, now: datetime | None = None
) -> LeaseView:
    """The holder (or a supervisor/administrator of the pool) gives the item back. Commits.

    A claimed item becomes unread again; a drafted one stays drafted (its draft is kept).
    Releasing an item nobody holds is a no-op that answers the current state.
    """
    now = now or utcnow()
    for _ in range(_CAS_ATTEMPTS):
        item = _load(session, user, study_uid)
        if item.claimed_by_id is None:
            return item.view()
        if item.claimed_by_id != user.id and not _is_supervisor_of(user, item):
            if item.held_by_other(user.id, now):
                raise NotAllowed(
                    f"study {study_uid} is held by {item.holder_username}; only they or a "
                    "supervisor of the pool can release it"
                )
            raise NotAllowed(f"you do not hold study {study_uid}")
        if _cas(session, item, **_freed(item.status)):
            session.commit()
            log.info("study %s released by %s", study_uid, user.username)
            return _load(session, user, study_uid).view()
        session.rollback()
    raise LeaseConflict(f"study {study_uid} kept changing; try again")


def reassign(
    session: Session,
    user: User,
    study_uid: str,
    username: str,
    *,
    lease: timedelta,
    now: datetime | None = None,
) -> LeaseView:
    """A supervisor (or administrator) of the pool hands the item to ``username``, a qualified
    reader of the pool, whatever lease was running. Recorded as a REASSIGNMENT routing decision.
    Commits."""
    now = now or utcnow()
    item = _load(session, user, study_uid)
    if not _is_supervisor_of(user, item):
        raise NotAllowed(f"only a supervisor of {item.pool_name} can reassign its studies")
    target = session.scalar(select(User).where(User.username == username))
    if target is None:
        raise ItemNotFound(f"no user {username!r}")
    problem = qualification_problem(target, item)
    if problem is not None:
        raise NotAllowed(problem)

    def decide(seen: _Item) -> None:
        current = session.get(WorklistItem, seen.id)
        assert current is not None
        session.add(
            RoutingDecision(
                study_pk=seen.study_pk,
                kind=RoutingDecisionKind.REASSIGNMENT,
                rule=f"reassigned-to:{target.username}",
                from_pool_id=seen.pool_id,
                pool_id=seen.pool_id,
                section=seen.section,
                priority=current.priority,
                due_at=current.due_at,
                decided_at=now,
                decided_by_id=user.id,
                detail={"from_reader": seen.holder_username, "to_reader": target.username},
            )
        )

    view = _take(session, user, study_uid, target, lease=lease, now=now, force=True, decide=decide)
    log.info("study %s reassigned to %s by %s", study_uid, username, user.username)
    return view


def _freed(status: WorklistStatus) -> dict[str, Any]:
    values: dict[str, Any] = {"claimed_by_id": None, "claimed_at": None, "lease_expires_at": None}
    if status is WorklistStatus.CLAIMED:
        values["status"] = WorklistStatus.UNREAD
    return values


def expire_leases(sessions: sessionmaker[Session], now: datetime | None = None) -> list[str]:
    """Free every item whose lease ran out (claimed → unread; drafted stays drafted); returns
    their study UIDs. Safe to run in several sweepers at once: each row is freed by one
    conditional UPDATE, and a reader who renewed meanwhile no longer matches it."""
    now = now or utcnow()
    lapsed = and_(
        WorklistItem.lease_expires_at.is_not(None),
        WorklistItem.lease_expires_at < now,
        WorklistItem.status != WorklistStatus.SIGNED,
    )
    freed: list[str] = []
    with sessions() as session:
        rows = session.execute(
            select(WorklistItem.id, Study.study_uid)
            .join(Study, Study.id == WorklistItem.study_pk)
            .where(lapsed)
        ).all()
        for item_id, study_uid in rows:
            result = session.execute(
                update(WorklistItem)
                .where(WorklistItem.id == item_id, lapsed)
                .values(
                    version=WorklistItem.version + 1,
                    claimed_by_id=None,
                    claimed_at=None,
                    lease_expires_at=None,
                    status=_unread_if_claimed(),
                )
                .execution_options(synchronize_session=False)
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                freed.append(study_uid)
        session.commit()
    if freed:
        log.info("lease lapsed, back on the worklist: %s", ", ".join(freed))
    return freed


def _unread_if_claimed() -> Any:
    return case(
        (WorklistItem.status == WorklistStatus.CLAIMED, WorklistStatus.UNREAD.value),
        else_=WorklistItem.status,
    )


# --- for the reporting module -------------------------------------------------------------------


def mark_drafted(
    session: Session, study_pk: int, *, by_user_id: int, lease: timedelta | None = None
) -> bool:
    """A draft was saved for the study by ``by_user_id``: status DRAFTED (unless signed), and,
    when ``lease`` is given and that user holds the item, the lease is renewed to now + lease
    (autosave keeps the reader's hold). Version bumped. Runs in the caller's transaction (no
    commit). False when the item does not exist or is signed."""
    now = utcnow()
    values: dict[str, Any] = {"status": WorklistStatus.DRAFTED}
    if lease is not None:
        values["lease_expires_at"] = _lease_if_holder(by_user_id, now + lease)
    result = session.execute(
        update(WorklistItem)
        .where(WorklistItem.study_pk == study_pk, WorklistItem.status != WorklistStatus.SIGNED)
        .values(version=WorklistItem.version + 1, **values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def _lease_if_holder(user_id: int, until: datetime) -> Any:
    return case((WorklistItem.claimed_by_id == user_id, until), else_=WorklistItem.lease_expires_at)


def mark_signed(session: Session, study_pk: int, *, by_user_id: int, final: bool) -> bool:
    """The study's report was signed by ``by_user_id``. ``final``: status SIGNED; otherwise
    (a junior's preliminary signature awaiting a senior's) status DRAFTED, so the item stays
    open for the second signature. Either way the lease is cleared and the version bumped.
    Runs in the caller's transaction (no commit). False when the study has no worklist item."""
    status = WorklistStatus.SIGNED if final else WorklistStatus.DRAFTED
    result = session.execute(
        update(WorklistItem)
        .where(WorklistItem.study_pk == study_pk)
        .values(
            version=WorklistItem.version + 1,
            status=status,
            claimed_by_id=None,
            claimed_at=None,
            lease_expires_at=None,
            # SET reads the row as it was: the signer's claim time survives for statistics.
            signed_claim_at=case(
                (WorklistItem.claimed_by_id == by_user_id, WorklistItem.claimed_at),
                else_=WorklistItem.signed_claim_at,
            ),
        )
        .execution_options(synchronize_session=False)
    )
    log.info("study pk %s %s by user %s", study_pk, "signed" if final else "pre-signed", by_user_id)
    return result.rowcount == 1  # type: ignore[attr-defined]


def holds_lease(session: Session, study_pk: int, user_id: int, now: datetime | None = None) -> bool:
    """True if ``user_id`` holds an unexpired lease on the study (for sign/draft checks)."""
    now = now or utcnow()
    return bool(
        session.scalar(
            select(func.count())
            .select_from(WorklistItem)
            .where(
                WorklistItem.study_pk == study_pk,
                WorklistItem.claimed_by_id == user_id,
                or_(WorklistItem.lease_expires_at.is_(None), WorklistItem.lease_expires_at > now),
            )
        )
    )
