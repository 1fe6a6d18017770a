"""ORM models: the network (institutions, devices, users), the DICOM index
(patient → study → series → instance, PS3.3 C.7 "Patient/Study/Series/Instance" IE levels),
task outcomes and worklist items.

Times are stored in UTC; :class:`UTCDateTime` hands back aware datetimes on SQLite too.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from remote_dx.core.clock import utcnow


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; store aware UTC times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}


class InstitutionLevel(enum.StrEnum):
    """Level in the referral tree: province → city → county → township → village."""

    PROVINCE = "province"
    CITY = "city"
    COUNTY = "county"
    TOWNSHIP = "township"
    VILLAGE = "village"


class Role(enum.StrEnum):
    TECHNICIAN = "technician"
    READER = "reader"
    SENIOR_READER = "senior_reader"
    SUPERVISOR = "supervisor"
    STATISTICIAN = "statistician"
    ADMIN = "admin"


class StudyStatus(enum.StrEnum):
    """Where a study is on its way from receipt to the worklist."""

    RECEIVING = "receiving"  # instances still arriving (quiet period not over)
    QUEUED = "queued"  # quiet period over, processing task enqueued
    PROCESSED = "processed"  # indexed, previewed, validated and routed
    FAILED = "failed"  # processing gave up after max attempts


class Priority(enum.StrEnum):
    STAT = "stat"
    URGENT = "urgent"
    ROUTINE = "routine"


class WorklistStatus(enum.StrEnum):
    UNREAD = "unread"
    CLAIMED = "claimed"
    DRAFTED = "drafted"
    SIGNED = "signed"


def _enum(cls: type[enum.Enum]) -> Enum:
    # Stored as plain strings so PostgreSQL needs no enum types and values stay readable.
    return Enum(cls, native_enum=False, length=32, values_callable=lambda e: [m.value for m in e])


class Institution(Base):
    __tablename__ = "institutions"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    name_en: Mapped[str | None] = mapped_column(String(200))
    level: Mapped[InstitutionLevel] = mapped_column(_enum(InstitutionLevel))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("institutions.id"))
    # Where signed results go back by C-STORE, when the township has a PACS/AE.
    return_ae_title: Mapped[str | None] = mapped_column(String(16))
    return_host: Mapped[str | None] = mapped_column(String(255))
    return_port: Mapped[int | None] = mapped_column(Integer)

    parent: Mapped[Institution | None] = relationship(remote_side=[id])

    def lead_hospital(self) -> Institution | None:
        """The county (or city) lead hospital of this institution's medical community."""
        node: Institution | None = self
        while node is not None and node.level not in (
            InstitutionLevel.COUNTY,
            InstitutionLevel.CITY,
            InstitutionLevel.PROVINCE,
        ):
            node = node.parent
        return node


class Device(Base):
    """A modality or ECG cart, known by its AE title (PS3.8 §7.1.1.5 Called/Calling AE Title)."""

    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    modality: Mapped[str] = mapped_column(String(16))
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # SHA-256 (hex) of the device's HTTP API key (``X-Device-Key``); the key itself is shown once
    # when made and never stored. Keys are 32 random bytes, so a plain hash cannot be brute-forced.
    api_key_hash: Mapped[str | None] = mapped_column(String(64), unique=True, index=True)
    # DICOM node settings (migration 0005_dicom_nodes): where this AE listens, so it can be a
    # C-MOVE destination (PS3.4 C.4.2.1.4.2); the source addresses (IPs or CIDR networks) it may
    # associate from (None or empty: any); and its share of the receiver, so one broken modality
    # cannot starve the others (None: no limit of its own).
    host: Mapped[str | None] = mapped_column(String(255))
    port: Mapped[int | None] = mapped_column(Integer)
    allowed_addresses: Mapped[list[str] | None] = mapped_column(JSON)
    max_associations: Mapped[int | None] = mapped_column(Integer)
    max_instances_per_second: Mapped[float | None] = mapped_column(Float)

    institution: Mapped[Institution] = relationship()


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    full_name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(_enum(Role))
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    # Reader qualifications: modalities read (e.g. ["DX", "CR", "ECG"]) and professional title.
    modalities: Mapped[list[str]] = mapped_column(JSON, default=list)
    title: Mapped[str | None] = mapped_column(String(32))
    # Subspecialty sections of the reader's pool they read for (empty: the general pool only).
    sections: Mapped[list[str]] = mapped_column(JSON, default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Issue 7: access tokens issued before this instant are refused (disable, password reset,
    # "log out everywhere"); None = no cut-off.
    tokens_valid_after: Mapped[datetime | None]

    institution: Mapped[Institution] = relationship()


class Patient(Base):
    """A patient as known to the issuing institution (PatientID is only unique per issuer)."""

    __tablename__ = "patients"
    __table_args__ = (UniqueConstraint("issuer", "patient_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    issuer: Mapped[str] = mapped_column(String(64))
    # Indexed alone too: QIDO-RS matches PatientID across issuers (migration 0005_dicomweb).
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    birth_date: Mapped[str | None] = mapped_column(String(8))
    sex: Mapped[str | None] = mapped_column(String(2))


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    origin_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    device_id: Mapped[int | None] = mapped_column(ForeignKey("devices.id"))
    accession_number: Mapped[str | None] = mapped_column(String(64), index=True)
    study_date: Mapped[str | None] = mapped_column(String(8), index=True)
    study_time: Mapped[str | None] = mapped_column(String(16))
    description: Mapped[str | None] = mapped_column(String(200))
    modalities: Mapped[str | None] = mapped_column(String(64))
    body_part: Mapped[str | None] = mapped_column(String(64))
    character_set: Mapped[str | None] = mapped_column(String(128))
    # QIDO-RS return keys (PS3.18 Table 10.6.3-3), migration 0005_dicomweb.
    referring_physician: Mapped[str | None] = mapped_column(String(200))
    dicom_study_id: Mapped[str | None] = mapped_column(String(16))

    status: Mapped[StudyStatus] = mapped_column(
        _enum(StudyStatus), default=StudyStatus.RECEIVING, index=True
    )
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    queued_at: Mapped[datetime | None]
    processed_at: Mapped[datetime | None]
    # Bumped by every new instance, so processing can tell if it saw the whole study.
    revision: Mapped[int] = mapped_column(Integer, default=0)
    processed_revision: Mapped[int | None] = mapped_column(Integer)
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    preview_key: Mapped[str | None] = mapped_column(String(255))
    validation_problems: Mapped[list[str]] = mapped_column(JSON, default=list)

    patient: Mapped[Patient] = relationship()
    origin: Mapped[Institution] = relationship()
    device: Mapped[Device | None] = relationship()
    series: Mapped[list[Series]] = relationship(back_populates="study", order_by="Series.id")
    worklist_item: Mapped[WorklistItem | None] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    description: Mapped[str | None] = mapped_column(String(200))
    body_part: Mapped[str | None] = mapped_column(String(64))

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(
        back_populates="series", order_by="Instance.id"
    )


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    object_key: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Image geometry for QIDO-RS instance queries and WADO-RS frame numbers (migration 0005).
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    # Issue 7: set by `remote-dx fsck --repair` when the object is gone or corrupt (migration
    # 0005_ops); cleared when fsck finds it whole again (restored from a backup, re-sent).
    missing_at: Mapped[datetime | None]

    series: Mapped[Series] = relationship(back_populates="instances")


class TaskRun(Base):
    """The outcome of one task for one study: the database, not the broker, knows what is done."""

    __tablename__ = "task_runs"
    __table_args__ = (UniqueConstraint("task_name", "study_pk"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_name: Mapped[str] = mapped_column(String(64))
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    status: Mapped[str] = mapped_column(String(16))  # running | succeeded | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class WorklistItem(Base):
    __tablename__ = "worklist_items"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), unique=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    priority: Mapped[Priority] = mapped_column(_enum(Priority), default=Priority.ROUTINE)
    status: Mapped[WorklistStatus] = mapped_column(
        _enum(WorklistStatus), default=WorklistStatus.UNREAD, index=True
    )
    routed_at: Mapped[datetime] = mapped_column(default=utcnow)
    due_at: Mapped[datetime] = mapped_column(index=True)
    routing_rule: Mapped[str] = mapped_column(String(128))
    # A named subspecialty section inside the pool (e.g. "cardiology"); None = whole pool.
    section: Mapped[str | None] = mapped_column(String(64))
    # Reading (issue 4): one reader holds a lease; it lapses if the reader walks away.
    claimed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    claimed_at: Mapped[datetime | None]
    lease_expires_at: Mapped[datetime | None] = mapped_column(index=True)
    # When the signer's claim began; kept when signing clears the lease (claim → sign statistics,
    # migration 0005_stats).
    signed_claim_at: Mapped[datetime | None]
    # 0 = the pool it was first routed to; each escalation (manual or automatic) adds one.
    escalation_level: Mapped[int] = mapped_column(Integer, default=0)
    escalated_at: Mapped[datetime | None]
    second_signature_required: Mapped[bool] = mapped_column(Boolean, default=False)
    # Bumped on every change, so server-sent events and clients can tell what is new.
    version: Mapped[int] = mapped_column(Integer, default=0)

    study: Mapped[Study] = relationship(back_populates="worklist_item")
    pool: Mapped[Institution] = relationship()
    claimed_by: Mapped[User | None] = relationship()


# --- ECG (issue 3) --------------------------------------------------------------------------------


class AnalysisStatus(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class AlertSource(enum.StrEnum):
    ECG_ANALYSIS = "ecg-analysis"  # raised by the preliminary (machine) analysis
    READER = "reader"  # raised by a reader while reading


class ECGAnalysisRecord(Base):
    """The machine's preliminary analysis of an ECG study, with the reader's confirmation beside it.

    ``result`` (the analysis, :meth:`ECGAnalysis.to_dict`) and ``device_measurements`` (what the
    cart itself measured) are kept untouched; ``confirmed`` is what the reader confirmed, so
    statistics can compare machine, cart and reader. The summary columns (heart rate, rhythm,
    critical, technically unsatisfactory) copy values of ``result`` so the worklist can show them
    without reading JSON.
    """

    __tablename__ = "ecg_analyses"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), unique=True)
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    algorithm_version: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[AnalysisStatus] = mapped_column(
        _enum(AnalysisStatus), default=AnalysisStatus.PENDING
    )
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    device_measurements: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    heart_rate: Mapped[float | None] = mapped_column(Float)
    rhythm: Mapped[str | None] = mapped_column(String(32))
    critical: Mapped[bool] = mapped_column(Boolean, default=False)
    technically_unsatisfactory: Mapped[bool] = mapped_column(Boolean, default=False)
    analysed_at: Mapped[datetime | None]
    confirmed: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    confirmed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    confirmed_at: Mapped[datetime | None]


class CriticalAlert(Base):
    """A critical finding the routed pool must act on at once (acknowledged by a reader)."""

    __tablename__ = "critical_alerts"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    origin_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    source: Mapped[AlertSource] = mapped_column(_enum(AlertSource))
    reasons: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    raised_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    # The named clinician who took the value (危急值 must reach a named person).
    acknowledged_by_name: Mapped[str | None] = mapped_column(String(100))
    acknowledgement_note: Mapped[str | None] = mapped_column(Text)  # migration 0004
    notify_count: Mapped[int] = mapped_column(Integer, default=0)
    last_notified_at: Mapped[datetime | None]


class ReacquireRequest(Base):
    """A "technically unsatisfactory, re-acquire" notice to the township that took the ECG."""

    __tablename__ = "reacquire_requests"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), unique=True)
    origin_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    reasons: Mapped[list[str]] = mapped_column(JSON, default=list)
    leads: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[datetime | None]


# --- Reading workflow (issue 4) -------------------------------------------------------------------


class RoutingRuleSet(Base):
    """A version of the routing rules (YAML text); the newest active one is in force."""

    __tablename__ = "routing_rule_sets"

    id: Mapped[int] = mapped_column(primary_key=True)
    yaml_text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    comment: Mapped[str | None] = mapped_column(String(200))


class RoutingDecisionKind(enum.StrEnum):
    INITIAL = "initial"
    ESCALATION = "escalation"  # overdue → one level up, by the periodic task
    CONSULTATION = "consultation"  # a reader asked a higher level (会诊)
    REASSIGNMENT = "reassignment"  # a supervisor moved it
    PRIORITY = "priority"  # priority raised (e.g. a critical ECG)


class RoutingDecision(Base):
    """Every routing decision, with the rule (or person) that made it."""

    __tablename__ = "routing_decisions"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    kind: Mapped[RoutingDecisionKind] = mapped_column(_enum(RoutingDecisionKind))
    rule: Mapped[str] = mapped_column(String(128))
    from_pool_id: Mapped[int | None] = mapped_column(ForeignKey("institutions.id"))
    pool_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    section: Mapped[str | None] = mapped_column(String(64))
    priority: Mapped[Priority] = mapped_column(_enum(Priority))
    due_at: Mapped[datetime]
    decided_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    decided_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ConsultationStatus(enum.StrEnum):
    OPEN = "open"
    ANSWERED = "answered"
    CANCELLED = "cancelled"


class Consultation(Base):
    """会诊: a reader asks a higher-level pool for an opinion; both opinions are kept."""

    __tablename__ = "consultations"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    requested_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    from_pool_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    to_pool_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    automatic: Mapped[bool] = mapped_column(Boolean, default=False)
    question: Mapped[str | None] = mapped_column(Text)
    requester_opinion: Mapped[str | None] = mapped_column(Text)
    status: Mapped[ConsultationStatus] = mapped_column(
        _enum(ConsultationStatus), default=ConsultationStatus.OPEN, index=True
    )
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    answered_at: Mapped[datetime | None]
    answered_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    answer: Mapped[str | None] = mapped_column(Text)


class ReportStatus(enum.StrEnum):
    DRAFT = "draft"
    PRELIMINARY = "preliminary"  # signed by a junior; awaits the senior's second signature
    FINAL = "final"
    AMENDED = "amended"  # final, with a later version than the first signed one


class Report(Base):
    """The reading's result for one study; its text lives in :class:`ReportVersion` rows."""

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), unique=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    template: Mapped[str] = mapped_column(String(64))
    status: Mapped[ReportStatus] = mapped_column(
        _enum(ReportStatus), default=ReportStatus.DRAFT, index=True
    )
    current_version: Mapped[int] = mapped_column(Integer, default=0)
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    signed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    signed_at: Mapped[datetime | None] = mapped_column(index=True)
    confirmed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    confirmed_at: Mapped[datetime | None]
    # Short code printed on the report; /verify/{code} shows it to anyone (结果互认).
    verify_code: Mapped[str | None] = mapped_column(String(16), unique=True)
    positive: Mapped[bool | None] = mapped_column(Boolean)  # abnormal finding, for statistics
    critical: Mapped[bool] = mapped_column(Boolean, default=False)
    draft: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # autosaved, unsigned content
    draft_saved_at: Mapped[datetime | None]
    # One more on every change of the draft: an autosave names the revision it was made from,
    # and one made from an older draft is refused instead of overwriting the newer one.
    draft_revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class ReportVersion(Base):
    """One signed version of a report: immutable once written; amendments add versions."""

    __tablename__ = "report_versions"
    __table_args__ = (UniqueConstraint("report_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # preliminary | final | confirm | amend
    content: Mapped[dict[str, Any]] = mapped_column(JSON)  # findings, impression, measurements…
    reason: Mapped[str | None] = mapped_column(Text)  # why it was amended
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Ed25519 over the canonical JSON of the signed payload (hub key).
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    signature: Mapped[str | None] = mapped_column(String(128))
    key_id: Mapped[str | None] = mapped_column(String(64))


class DeliveryChannel(enum.StrEnum):
    DICOM_PDF = "dicom-pdf"  # Encapsulated PDF by C-STORE to the township
    DICOM_SR = "dicom-sr"  # Basic Text SR by C-STORE
    FHIR = "fhir"


class Delivery(Base):
    """A signed report's way back to the township; retried until delivered."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    channel: Mapped[DeliveryChannel] = mapped_column(_enum(DeliveryChannel))
    target: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]


# --- Trust: tokens, login throttling and the audit trail (issue 7) --------------------------------


class RefreshToken(Base):
    """A refresh token (RFC 6749 §6), stored as its SHA-256 only; rotated on every use.

    Tokens of one login share a ``family``: presenting a token that was already rotated (a
    replay, RFC 9700 §4.14.2) revokes the whole family.
    """

    __tablename__ = "refresh_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    family: Mapped[str] = mapped_column(String(32), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    issued_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class LoginThrottle(Base):
    """Failed logins counted per key (``user:<name>`` or ``addr:<client address>``)."""

    __tablename__ = "login_throttles"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    first_failure_at: Mapped[datetime] = mapped_column(default=utcnow)
    locked_until: Mapped[datetime | None]


class AuditChainHead(Base):
    """The one row that serialises audit writers: its update locks, then the next record links to
    ``last_hash`` and takes ``last_seq + 1``."""

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    last_hash: Mapped[str] = mapped_column(String(64))


class AuditRecord(Base):
    """One audit event (IHE ITI-20 / DICOM PS3.15 A.5 semantics), append-only, hash-chained.

    ``hash`` = SHA-256 over the canonical form of the record's fields and ``prev_hash``
    (see :mod:`remote_dx.core.audit`), so changing or removing a record breaks the chain.
    """

    __tablename__ = "audit_records"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    recorded_at: Mapped[datetime] = mapped_column(index=True)
    action: Mapped[str] = mapped_column(String(32), index=True)
    # PS3.15 A.5.1 EventOutcomeIndicator: 0 success, 4 minor failure, 8 serious, 12 major.
    outcome: Mapped[int] = mapped_column(Integer)
    user_id: Mapped[int | None] = mapped_column(Integer, index=True)
    username: Mapped[str | None] = mapped_column(String(200), index=True)
    role: Mapped[str | None] = mapped_column(String(32))
    institution: Mapped[str | None] = mapped_column(String(64))
    patient: Mapped[str | None] = mapped_column(String(140), index=True)
    object_type: Mapped[str | None] = mapped_column(String(32))
    object_id: Mapped[str | None] = mapped_column(String(200))
    client_address: Mapped[str | None] = mapped_column(String(64))
    method: Mapped[str | None] = mapped_column(String(8))
    path: Mapped[str | None] = mapped_column(String(500))
    status_code: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


# --- Statistics (issue 6) -------------------------------------------------------------------------

# Dashboards select studies by their receiving time (the SLA clock's start), migration 0005_stats.
Index("ix_studies_received_at", Study.received_at)


class RecognitionUse(Base):
    """结果互认 in use: a member institution accepted a signed result instead of examining the
    patient again (an exam avoided). Recorded by ``POST /api/v1/recognition/{verify_code}/use``;
    the registry lookup alone does not count (a lookup may end in a new exam)."""

    __tablename__ = "recognition_uses"
    __table_args__ = (UniqueConstraint("report_id", "institution_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id"), index=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    exam: Mapped[str] = mapped_column(String(64))  # the report's template code
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    used_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    used_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class StudyFact(Base):
    """One narrow row per study for the dashboards (issue 6), derived from studies, worklist
    items, reports, the origin's tree and the first routing decision by
    :func:`remote_dx.stats.facts.select_facts`; never written by the workflow itself (triggers
    mark changed studies in ``study_facts_dirty``, migration 0006_study_facts)."""

    __tablename__ = "study_facts"

    study_pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    received_at: Mapped[datetime] = mapped_column(index=True)
    origin_id: Mapped[int] = mapped_column(Integer)
    county_id: Mapped[int | None] = mapped_column(Integer)
    modalities: Mapped[str | None] = mapped_column(String(64))
    pool_id: Mapped[int | None] = mapped_column(Integer)
    pool_level: Mapped[InstitutionLevel | None] = mapped_column(_enum(InstitutionLevel))
    report_id: Mapped[int | None] = mapped_column(Integer)
    is_read: Mapped[bool] = mapped_column(Boolean)
    result_at: Mapped[datetime | None]
    signed_at: Mapped[datetime | None] = mapped_column(index=True)
    signed_by_id: Mapped[int | None] = mapped_column(Integer)
    positive: Mapped[bool | None] = mapped_column(Boolean)
    critical: Mapped[bool | None] = mapped_column(Boolean)
    first_due_at: Mapped[datetime | None]
    signed_claim_at: Mapped[datetime | None]
    # Precomputed per study so a figure's sort carries a few narrow columns: durations as
    # numbers (set only for a read study, as the figures count them), SLA outcome, ECG or not.
    tat_seconds: Mapped[float | None] = mapped_column(Float)  # received → result out
    claim_sign_seconds: Mapped[float | None] = mapped_column(Float)  # signer's claim → signed
    sla_met: Mapped[bool] = mapped_column(Boolean)  # read by the first routing's due time
    with_sla: Mapped[bool] = mapped_column(Boolean)  # read, and a first due time exists
    is_ecg: Mapped[bool | None] = mapped_column(Boolean)  # NULL when modalities are unknown
    analysed: Mapped[bool] = mapped_column(Boolean)  # an ECG analysis row exists
    unsatisfactory: Mapped[bool] = mapped_column(Boolean)  # technically unsatisfactory
    sent_back: Mapped[bool] = mapped_column(Boolean)  # a re-acquire notice exists


class StudyFactDirty(Base):
    """Studies whose fact row is stale (written by triggers, drained by the statistics)."""

    __tablename__ = "study_facts_dirty"

    study_pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)


# --- Worklist pages (issue 7) ---------------------------------------------------------------------

# A pool's page in the default order (priority, then due time) or by due time, read off an index
# (remote_dx.worklist.service._page_keys), migration 0007_worklist_indexes.
Index(
    "ix_worklist_items_pool_priority_due",
    WorklistItem.pool_id,
    WorklistItem.priority,
    WorklistItem.due_at,
    WorklistItem.id,
)
Index("ix_worklist_items_pool_due", WorklistItem.pool_id, WorklistItem.due_at, WorklistItem.id)


class WorklistVersion(Base):
    """A pool's worklist change counter: counted up by PostgreSQL triggers (migration
    0009_worklist_versions) in the transaction of every change to what a worklist page of that
    pool shows, so a page read after the counter can be kept until the counter moves
    (:mod:`remote_dx.worklist.page_cache`). No row, as on SQLite where no trigger writes one:
    nothing is kept."""

    __tablename__ = "worklist_versions"

    pool_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(BigInteger, default=0)
