"""JSON shapes of the ECG API (upload answer, the reader's confirmation, re-acquire notices)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from remote_dx.worklist.schemas import Timestamp


class UploadAnswer(BaseModel):
    study_uid: str
    sop_instance_uid: str
    format: str = Field(description="dicom, wfdb, hl7-aecg, philips-sierra, ge-muse or csv")
    duplicate: bool = Field(description="True when this very upload was already stored")
    n_leads: int
    sampling_rate: float
    duration_s: float


class Statement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str | None = Field(None, max_length=64)
    zh: str | None = Field(None, max_length=500)
    en: str | None = Field(None, max_length=500)


class ConfirmedMeasurements(BaseModel):
    """The reader's values; null means "not confirmed / not measurable"."""

    model_config = ConfigDict(extra="forbid")

    heart_rate: float | None = Field(None, ge=0, le=400, description="bpm")
    pr_ms: float | None = Field(None, ge=0, le=1000)
    p_duration_ms: float | None = Field(None, ge=0, le=500)
    qrs_ms: float | None = Field(None, ge=0, le=500)
    qt_ms: float | None = Field(None, ge=0, le=1000)
    qtc_bazett_ms: float | None = Field(None, ge=0, le=1000)
    qtc_fridericia_ms: float | None = Field(None, ge=0, le=1000)
    axis_deg: float | None = Field(None, ge=-180, le=360)


class ConfirmedECG(BaseModel):
    """What the reader confirmed, stored beside (never over) the machine's analysis."""

    model_config = ConfigDict(extra="forbid")

    measurements: ConfirmedMeasurements = Field(default_factory=ConfirmedMeasurements)
    rhythm: str | None = Field(None, max_length=32, description="e.g. sinus, afib")
    statements: list[Statement] = Field(default_factory=list, max_length=50)
    critical: bool | None = Field(None, description="the reader's own call on criticality")
    comment: str | None = Field(None, max_length=2000)


class ReacquireNotice(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    study_uid: str
    origin: str
    patient_id: str
    patient_name: str | None
    reasons: list[str]
    leads: dict[str, object]
    requested_at: Timestamp
    resolved_at: Timestamp | None
