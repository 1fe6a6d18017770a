"""Read models of the worklist and study views: the JSON shapes the API answers with.

Times are aware UTC datetimes serialised as ISO 8601 with a ``Z`` and millisecond precision in
every case, so that strings sort like the instants they name (pydantic's default drops the
fraction when it is zero, which breaks that).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from remote_dx.core.models import Priority, StudyStatus, WorklistStatus


def iso_utc(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_TIMESTAMP_SCHEMA = {"type": "string", "format": "date-time", "example": "2025-01-31T08:15:00.000Z"}

Timestamp = Annotated[
    datetime,
    PlainSerializer(iso_utc, return_type=str),
    WithJsonSchema(_TIMESTAMP_SCHEMA),
]


class _View(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ECGSummary(BaseModel):
    """The preliminary ECG analysis at a glance (in full: GET /api/v1/ecg/{uid}/analysis)."""

    status: str = Field(description="pending, done or failed")
    heart_rate: float | None = Field(description="bpm")
    rhythm: str | None = Field(description="sinus, sinus_brady, afib, …")
    critical: bool
    technically_unsatisfactory: bool


class WorklistEntry(_View):
    study_uid: str
    patient_id: str
    patient_name: str | None = Field(
        description="Decoded Unicode; DICOM PN components stay joined by '^' (PS3.5 §6.2.1)"
    )
    patient_sex: str | None
    patient_birth_date: str | None = Field(description="DICOM DA, YYYYMMDD")
    modality: str | None
    study_description: str | None
    origin: str = Field(description="Name of the institution the study came from")
    pool: str = Field(description="Name of the institution whose readers read it")
    priority: Priority
    status: WorklistStatus
    received_at: Timestamp
    due_at: Timestamp
    num_instances: int
    section: str | None = Field(None, description="Subspecialty section of the pool, if any")
    claimed_by: str | None = Field(None, description="Full name of the reader holding the lease")
    lease_expires_at: Timestamp | None = None
    escalation_level: int = Field(0, description="0 = first pool; +1 per escalation")
    overdue: bool = Field(False, description="Past its due time and not signed")
    version: int = Field(0, description="Bumped on every change of the item")
    ecg: ECGSummary | None = Field(
        None, description="ECG studies: the preliminary analysis in brief (null otherwise)"
    )


class WorklistPage(BaseModel):
    items: list[WorklistEntry]
    total: int = Field(
        description="Items matching the filters, before limit/offset (from 1,000 items on: as "
        "counted within the last few seconds)"
    )


class WorklistCounts(BaseModel):
    by_status: dict[WorklistStatus, int] = Field(description="Every status, zero included")
    overdue: int = Field(description="Past their due time and not signed")
    total: int


class Holder(BaseModel):
    username: str
    full_name: str


class LeaseView(BaseModel):
    """A worklist item's reading state after a claim, renewal, release or reassignment."""

    study_uid: str
    status: WorklistStatus
    priority: Priority
    pool: str
    section: str | None
    claimed_by: Holder | None
    claimed_at: Timestamp | None
    lease_expires_at: Timestamp | None
    version: int


class WorklistChange(BaseModel):
    """One changed item in a server-sent ``worklist`` event."""

    study_uid: str
    status: WorklistStatus | None = None
    priority: Priority | None = None
    pool: str | None = None
    version: int | None = None
    claimed_by: str | None = None
    lease_expires_at: Timestamp | None = None
    escalation_level: int | None = None
    removed: bool = Field(False, description="The item left the user's scope (escalated, moved)")


class PatientView(_View):
    patient_id: str
    issuer: str
    name: str | None
    sex: str | None
    birth_date: str | None


class InstanceView(_View):
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    instance_number: int | None
    size_bytes: int


class SeriesView(_View):
    series_uid: str
    modality: str | None
    series_number: int | None
    description: str | None
    body_part: str | None
    instances: list[InstanceView]


class RoutingView(BaseModel):
    pool: str
    priority: Priority
    status: WorklistStatus
    routed_at: Timestamp
    due_at: Timestamp
    routing_rule: str


class StudyDetail(BaseModel):
    study_uid: str
    accession_number: str | None
    study_date: str | None
    study_time: str | None
    description: str | None
    modalities: str | None
    body_part: str | None
    origin: str
    status: StudyStatus
    received_at: Timestamp
    last_received_at: Timestamp
    processed_at: Timestamp | None
    num_instances: int
    validation_problems: list[str]
    preview_available: bool
    patient: PatientView
    series: list[SeriesView]
    worklist_item: RoutingView | None
    ecg: ECGSummary | None = Field(None, description="ECG studies: the analysis in brief")


class AlertView(BaseModel):
    """A critical result (危急值) alert and every step of it, timestamped."""

    id: int
    study_uid: str
    patient_id: str
    patient_name: str | None
    origin: str = Field(description="Name of the institution the study came from")
    origin_code: str
    pool: str = Field(description="Name of the pool the alert was raised for")
    source: str = Field(description="ecg-analysis (machine) or reader")
    reasons: list[dict[str, Any]] = Field(description='[{"code", "zh", "en"}]')
    raised_at: Timestamp
    acknowledged: bool
    acknowledged_at: Timestamp | None
    acknowledged_by: str | None = Field(description="Username of the user who recorded it")
    acknowledged_by_name: str | None = Field(description="The named person who took the value")
    acknowledgement_note: str | None
    notify_count: int = Field(description="Re-notifications so far (0: only the first one)")
    last_notified_at: Timestamp | None
    age_seconds: float = Field(
        description="Unacknowledged: time since raised; acknowledged: time it took to acknowledge"
    )


class AlertPage(BaseModel):
    items: list[AlertView]
    total: int
