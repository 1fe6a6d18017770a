"""Routing rules (administrators) and a study's routing history."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy import select

from remote_dx.api.deps import AppSettings, CurrentUser, DbSession
from remote_dx.core.clock import utcnow
from remote_dx.core.models import Institution, Role, RoutingRuleSet, User
from remote_dx.routing.escalation import routing_history
from remote_dx.routing.route import active_rules, institution_codes
from remote_dx.routing.rules import RuleSet, RuleSetError, load_rules
from remote_dx.routing.schemas import DecisionView, PoolRef, RuleSetView

router = APIRouter(prefix="/api/v1", tags=["routing"])

StudyUID = Annotated[
    str, Path(min_length=1, max_length=64, pattern=r"^[0-9.]+$", description="Study Instance UID")
]
MAX_RULES_BYTES = 256 * 1024


def require_admin(user: CurrentUser) -> User:
    if Role(user.role) is not Role.ADMIN:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail="only an administrator can read or change the rules"
        )
    return user


Admin = Annotated[User, Depends(require_admin)]


async def rules_body(request: Request) -> tuple[str, str | None]:
    """The YAML text: the raw body (``application/yaml``, ``text/plain``…), or JSON
    ``{"yaml": "...", "comment": "..."}``."""
    raw = await request.body()
    if len(raw) > MAX_RULES_BYTES:
        raise HTTPException(413, detail=f"rules larger than {MAX_RULES_BYTES} bytes")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPException(422, detail="the rules must be UTF-8 text") from exc
    if content_type == "application/json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise HTTPException(422, detail=f"invalid JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("yaml"), str):
            raise HTTPException(422, detail='JSON bodies must be {"yaml": "<rules>"}')
        comment = data.get("comment")
        return data["yaml"], str(comment)[:200] if comment else None
    return text, None


def _view(rules: RuleSet, row: RoutingRuleSet | None, session: DbSession) -> RuleSetView:
    creator = None
    if row is not None and row.created_by_id is not None:
        user = session.get(User, row.created_by_id)
        creator = user.username if user is not None else None
    return RuleSetView(
        version=row.id if row is not None else rules.version,
        source=rules.source,
        yaml=rules.yaml_text,
        rules=[rule.name for rule in rules.rules],
        created_at=row.created_at if row is not None else None,
        created_by=creator,
        comment=row.comment if row is not None else None,
    )


@router.get(
    "/routing/rules",
    summary="The routing rules in force (administrators)",
    description="The newest stored version, else the file `RDX_ROUTING_FILE`, else the default.",
)
def get_rules(_admin: Admin, session: DbSession, settings: AppSettings) -> RuleSetView:
    rules = active_rules(session, settings.routing_file)
    row = session.get(RoutingRuleSet, rules.version) if rules.version is not None else None
    return _view(rules, row, session)


@router.get(
    "/routing/rules/versions",
    summary="Stored versions of the rules, newest first (administrators)",
)
def list_rule_versions(
    _admin: Admin, session: DbSession, limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> list[dict[str, Any]]:
    rows = session.execute(
        select(RoutingRuleSet, User.username)
        .outerjoin(User, User.id == RoutingRuleSet.created_by_id)
        .order_by(RoutingRuleSet.id.desc())
        .limit(limit)
    ).all()
    return [
        {
            "version": row.id,
            "created_at": row.created_at.isoformat(),
            "created_by": username,
            "active": row.active,
            "comment": row.comment,
        }
        for row, username in rows
    ]


@router.put(
    "/routing/rules",
    summary="Validate and store a new version of the routing rules (administrators)",
    description=(
        "Send the YAML as the body (`Content-Type: application/yaml`), or JSON "
        '`{"yaml": "...", "comment": "..."}`. Invalid rules answer 422 with every problem '
        "(line, rule, what is wrong) in `errors`; nothing is stored then. The new version is in "
        "force for studies routed from now on."
    ),
    responses={422: {"description": "The rules are invalid"}},
)
def put_rules(
    admin: Admin,
    session: DbSession,
    body: Annotated[tuple[str, str | None], Depends(rules_body)],
    comment: Annotated[str | None, Query(max_length=200)] = None,
) -> Any:
    text, body_comment = body
    try:
        rules = load_rules(text, known_codes=institution_codes(session), source="upload")
    except RuleSetError as exc:
        return JSONResponse(
            {"detail": str(exc), "errors": [p.as_dict() for p in exc.problems]},
            status_code=422,
        )
    row = RoutingRuleSet(
        yaml_text=text,
        created_at=utcnow(),
        created_by_id=admin.id,
        active=True,
        comment=comment or body_comment,
    )
    session.add(row)
    session.commit()
    rules.version, rules.source = row.id, f"db:{row.id}"
    return _view(rules, row, session)


def _pool(pools: dict[int, Institution], pool_id: int | None) -> PoolRef | None:
    if pool_id is None or pool_id not in pools:
        return None
    inst = pools[pool_id]
    return PoolRef(code=inst.code, name=inst.name, level=str(inst.level))


@router.get(
    "/studies/{study_uid}/routing",
    summary="Every routing decision on a study, oldest first, with the rule that made it",
    responses={404: {"description": "No such study, or not visible to this user"}},
)
def get_routing_history(
    study_uid: StudyUID, user: CurrentUser, session: DbSession
) -> list[DecisionView]:
    decisions = routing_history(session, user, study_uid)
    pools = {inst.id: inst for inst in session.scalars(select(Institution))}
    people = {
        uid: name
        for uid, name in session.execute(
            select(User.id, User.full_name).where(
                User.id.in_({d.decided_by_id for d in decisions if d.decided_by_id})
            )
        )
    }
    views = []
    for d in decisions:
        pool = _pool(pools, d.pool_id)
        assert pool is not None
        views.append(
            DecisionView(
                kind=str(d.kind),
                rule=d.rule,
                from_pool=_pool(pools, d.from_pool_id),
                pool=pool,
                section=d.section,
                priority=d.priority,
                due_at=d.due_at,
                decided_at=d.decided_at,
                decided_by=people.get(d.decided_by_id) if d.decided_by_id else None,
                detail=dict(d.detail or {}),
            )
        )
    return views
