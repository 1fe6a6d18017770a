"""JSON shapes of the routing API: rule-set versions, routing decisions, consultations."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from remote_dx.core.models import Priority
from remote_dx.worklist.schemas import Timestamp


class PoolRef(BaseModel):
    code: str
    name: str
    level: str


class RuleSetView(BaseModel):
    """The routing rules in force (or a stored version)."""

    version: int | None = Field(description="Stored version; null for the file or the default")
    source: str = Field(description="db:<version>, file:<path> or default")
    yaml: str
    rules: list[str] = Field(description="Rule names in matching order")
    created_at: Timestamp | None = None
    created_by: str | None = None
    comment: str | None = None


class RuleProblemView(BaseModel):
    line: int | None
    rule: str | None
    path: str | None
    message: str


class DecisionView(BaseModel):
    """One routing decision and what made it (a rule, the overdue sweep or a person)."""

    kind: str = Field(description="initial, priority, escalation, consultation or reassignment")
    rule: str
    from_pool: PoolRef | None
    pool: PoolRef
    section: str | None
    priority: Priority
    due_at: Timestamp
    decided_at: Timestamp
    decided_by: str | None
    detail: dict[str, Any]


class ConsultationRequest(BaseModel):
    question: str = Field(
        min_length=1, max_length=4000, description="What the upper level is asked"
    )
    opinion: str | None = Field(
        None, max_length=8000, description="The requesting reader's own opinion, kept beside"
    )
    to_pool: str | None = Field(
        None,
        max_length=64,
        description="Code of an institution above the current pool (default: the rules' choice)",
    )


class ConsultationAnswer(BaseModel):
    answer: str = Field(min_length=1, max_length=8000)


class ConsultationView(BaseModel):
    """A consultation (会诊) with both opinions: the requester's and the consulted pool's."""

    id: int
    study_uid: str
    status: str
    automatic: bool
    from_pool: PoolRef
    to_pool: PoolRef
    question: str | None
    requester_opinion: str | None
    requested_by: str | None
    requested_at: Timestamp
    answer: str | None
    answered_by: str | None
    answered_at: Timestamp | None
