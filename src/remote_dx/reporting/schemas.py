"""JSON shapes of reports: the content a reader writes and the API's request/answer bodies.

A report's content is one JSON object for every template; imaging templates use ``findings`` and
``impression``, the ECG template adds ``measurements``, ``rhythm`` and ``statements`` (the codes of
:mod:`remote_dx.ecg.analysis.statements`, with Chinese and English text).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from remote_dx.worklist.schemas import Timestamp


class Statement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str | None = Field(None, max_length=64)
    zh: str | None = Field(None, max_length=500)
    en: str | None = Field(None, max_length=500)


class Measurements(BaseModel):
    """ECG measurements (null: not measurable). Same keys as the analysis and the confirmation."""

    model_config = ConfigDict(extra="forbid")

    heart_rate: float | None = Field(None, ge=0, le=400, description="bpm")
    pr_ms: float | None = Field(None, ge=0, le=1000)
    qrs_ms: float | None = Field(None, ge=0, le=500)
    qt_ms: float | None = Field(None, ge=0, le=1000)
    qtc_bazett_ms: float | None = Field(None, ge=0, le=1000, description="QTc (Bazett)")
    axis_deg: float | None = Field(None, ge=-180, le=360, description="frontal QRS axis")


class ReportContent(BaseModel):
    """What a reader writes. ``critical``/``positive`` null: derived from the text and codes."""

    model_config = ConfigDict(extra="forbid")

    findings: str = Field("", max_length=20000, description="所见 / findings")
    impression: str = Field("", max_length=5000, description="诊断意见 / impression")
    measurements: Measurements | None = None
    rhythm: str | None = Field(None, max_length=32, description="ECG rhythm code, e.g. sinus")
    statements: list[Statement] = Field(default_factory=list, max_length=50)
    critical: bool | None = Field(None, description="危急值: the reader's call (null: derived)")
    positive: bool | None = Field(None, description="abnormal result (null: derived)")
    withdrawn: bool = Field(
        False, description="An amendment that withdraws the result (e.g. wrong patient)"
    )

    def stored(self) -> dict[str, Any]:
        """The JSON kept in the database (measurements null when the template has none)."""
        return self.model_dump(mode="json")


class DraftBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str | None = Field(None, max_length=64, description="template code; default: kept")
    content: ReportContent
    base_revision: int | None = Field(
        None,
        ge=0,
        description="the draft's `revision` this content was made from (0: the template's "
        "suggestion); when given and the draft has changed since, the save is refused with 409 "
        "and the newer draft is kept. Omitted: the save overwrites whatever is there.",
    )


class SignBody(BaseModel):
    """Sign what is given, or (no content) the saved draft."""

    model_config = ConfigDict(extra="forbid")

    template: str | None = Field(None, max_length=64)
    content: ReportContent | None = None


class ConfirmBody(BaseModel):
    """The senior may edit the preliminary text while confirming it."""

    model_config = ConfigDict(extra="forbid")

    content: ReportContent | None = None


class AmendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    content: ReportContent
    reason: str = Field(min_length=1, max_length=2000, description="why it is amended")

    @field_validator("reason")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("an amendment needs a reason")
        return value


class PersonView(BaseModel):
    name: str
    username: str
    title: str | None
    institution: str | None


class VersionView(BaseModel):
    version: int
    kind: str = Field(description="preliminary | final | confirm | amend")
    content: dict[str, Any]
    reason: str | None
    author: PersonView | None
    created_at: Timestamp
    key_id: str | None
    signature_valid: bool


class DraftView(BaseModel):
    template: str
    content: dict[str, Any]
    saved_at: Timestamp | None = Field(description="null: a suggestion from the template")
    saved: bool
    revision: int = Field(
        0,
        description="counts every change of the draft: a save, or confirmed ECG values carried "
        "into it (0: nothing saved); see base_revision",
    )


class ReportView(BaseModel):
    study_uid: str
    status: str | None = Field(
        description="null (nothing saved), draft, preliminary, final, amended"
    )
    template: str
    current_version: int
    second_signature_required: bool
    verify_code: str | None
    positive: bool | None
    critical: bool
    signed_by: PersonView | None
    signed_at: Timestamp | None
    confirmed_by: PersonView | None
    confirmed_at: Timestamp | None
    draft: DraftView | None = Field(
        description="the autosaved draft, or the template's suggestion when nothing is signed; "
        "shown to readers of the pool only"
    )
    versions: list[VersionView]


class TemplateView(BaseModel):
    code: str
    name: str
    name_en: str
    kind: str = Field(description="imaging | ecg")
    modalities: list[str]
    defaults: dict[str, Any]
    validity_days: int | None = Field(description="recognition window (结果互认)")
