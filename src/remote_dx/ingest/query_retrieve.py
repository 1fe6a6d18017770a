"""Query/Retrieve SCP on the receiver (PS3.4 Annex C): C-FIND, C-GET and C-MOVE.

A county PACS or a reading workstation (Weasis, RadiAnt, dcmtk ``findscu``/``getscu``/``movescu``)
queries the hub and retrieves what it may see:

* **C-FIND** (C.4.1) is answered from the index only — never by reading objects from storage —
  for the Study Root information model (levels STUDY, SERIES, IMAGE; patient attributes are study
  attributes there, C.6.2) and the Patient Root one (PATIENT, STUDY, SERIES, IMAGE; C.6.1).
  Matching (C.2.2.2): single value, universal (empty), wild card ``*``/``?`` on text and names,
  UID lists, DA/TM ranges. Unsupported keys are returned empty (C.2.2.1.3). Answers are encoded
  in UTF-8 (``ISO_IR 192``), which carries the Chinese names of every source character set.
* **C-GET** (C.4.3) sends the matching instances over the requestor's own association (it must
  have proposed the storage SOP classes with the SCP role, PS3.7 D.3.3.4); **C-MOVE** (C.4.2) to a
  known destination: a registered device or node with a host and port, or an institution's
  result-return AE. Anything else is 0xA801 "Move Destination unknown". The destination must
  belong to the calling AE's own institution, or be named in ``RDX_MOVE_SHARED_DESTINATIONS``
  (e.g. a regional archive every institution may send to); another institution's node is refused
  with 0x0124 "Refused: Not authorized" (PS3.7 C.5) — otherwise a township device could have the
  hub push the studies it sees to any PACS in the community. Instances go out in their stored
  transfer syntax; a compressed one is decoded for a C-GET requestor that accepted only
  uncompressed syntaxes.

Scoping: the calling AE's institution sees what that institution may see under the worklist's
one rule (:func:`remote_dx.worklist.service.visibility`): the studies routed to its reading pool
(a county hospital) plus the studies it sent (a township). Nothing else matches.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from sqlalchemy import ColumnElement, Select, exists, func, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.core.charset import decode_element
from remote_dx.core.models import (
    Device,
    Instance,
    Institution,
    Patient,
    Role,
    Series,
    Study,
    User,
    WorklistItem,
)
from remote_dx.storage.base import ObjectStore
from remote_dx.worklist.service import visibility

log = logging.getLogger(__name__)

# Statuses (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4).
PENDING = 0xFF00
CANCEL = 0xFE00
OUT_OF_RESOURCES_MATCHES = 0xA700  # C-FIND: out of resources
OUT_OF_RESOURCES_SUBOPS = 0xA702  # C-GET/C-MOVE: unable to perform sub-operations
MOVE_DESTINATION_UNKNOWN = 0xA801
#: PS3.7 C.5 general status "Refused: Not authorized", among C-MOVE's failures (PS3.4 C.4.2.1.5):
#: the destination is known but not the calling AE's institution's.
NOT_AUTHORIZED = 0x0124
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
#: Number of * Sub-operations are US (PS3.7 C.4.2.1.6): at most this many per request.
MAX_SUBOPERATIONS = 65535

#: Uncompressed syntaxes a stored instance may be re-encoded into without loss.
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
QR_TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


class Model(enum.StrEnum):
    STUDY_ROOT = "Study Root"
    PATIENT_ROOT = "Patient Root"


FIND_SOP_CLASSES: dict[UID, Model] = {
    StudyRootQueryRetrieveInformationModelFind: Model.STUDY_ROOT,
    PatientRootQueryRetrieveInformationModelFind: Model.PATIENT_ROOT,
}
MOVE_SOP_CLASSES: dict[UID, Model] = {
    StudyRootQueryRetrieveInformationModelMove: Model.STUDY_ROOT,
    PatientRootQueryRetrieveInformationModelMove: Model.PATIENT_ROOT,
}
GET_SOP_CLASSES: dict[UID, Model] = {
    StudyRootQueryRetrieveInformationModelGet: Model.STUDY_ROOT,
    PatientRootQueryRetrieveInformationModelGet: Model.PATIENT_ROOT,
}


class Level(enum.IntEnum):
    """Query/Retrieve Level (0008,0052), top to bottom."""

    PATIENT = 0
    STUDY = 1
    SERIES = 2
    IMAGE = 3


LEVELS: dict[Model, tuple[Level, ...]] = {
    Model.STUDY_ROOT: (Level.STUDY, Level.SERIES, Level.IMAGE),
    Model.PATIENT_ROOT: (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE),
}


class Matching(enum.StrEnum):
    """How a key is matched (PS3.4 C.2.2.2); RETURN keys are returned, never matched on."""

    UID = "UID list"
    TEXT = "single value, wild card"
    NAME = "single value, wild card (each component group)"
    DATE = "single value, range"
    TIME = "single value, range"
    NUMBER = "single value"
    MODALITIES = "single value, list (any series)"
    RETURN = "return only"


@dataclass(frozen=True)
class FindKey:
    """One attribute of the C-FIND key table: where it lives in the index and how it matches."""

    keyword: str
    vr: str
    level: Level
    matching: Matching
    column: Any  # SQL column expression, None for computed return keys
    value: Callable[[Any], Any]
    unique: bool = False


def _col(entity: str, attr: str) -> Callable[[Any], Any]:
    def get(row: Any) -> Any:
        obj = getattr(row, entity, None)
        return None if obj is None else getattr(obj, attr)

    return get


def _key(
    keyword: str, vr: str, level: Level, matching: Matching, column: Any, unique: bool = False
) -> FindKey:
    """A key stored in one index column (its value read from that row's ORM object)."""
    return FindKey(
        keyword, vr, level, matching, column, _col(column.class_.__name__, column.key), unique
    )


def _count(keyword: str, level: Level, name: str) -> FindKey:
    """A computed return key (counts, lists), filled per page by :func:`_add_counts`."""
    return FindKey(keyword, "IS", level, Matching.RETURN, None, lambda r: r.counts.get(name))


P, ST, SE, IM = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE
M = Matching

#: The C-FIND key table (the conformance statement lists it from here). Patient attributes are
#: PATIENT level in the Patient Root model and STUDY level in the Study Root one.
FIND_KEYS: tuple[FindKey, ...] = (
    _key("PatientName", "PN", P, M.NAME, Patient.name),
    _key("PatientID", "LO", P, M.TEXT, Patient.patient_id, unique=True),
    _key("IssuerOfPatientID", "LO", P, M.TEXT, Patient.issuer),
    _key("PatientBirthDate", "DA", P, M.DATE, Patient.birth_date),
    _key("PatientSex", "CS", P, M.TEXT, Patient.sex),
    _count("NumberOfPatientRelatedStudies", P, "patient_studies"),
    _key("StudyInstanceUID", "UI", ST, M.UID, Study.study_uid, unique=True),
    _key("StudyDate", "DA", ST, M.DATE, Study.study_date),
    _key("StudyTime", "TM", ST, M.TIME, Study.study_time),
    _key("AccessionNumber", "SH", ST, M.TEXT, Study.accession_number),
    _key("StudyID", "SH", ST, M.TEXT, Study.dicom_study_id),
    _key("StudyDescription", "LO", ST, M.TEXT, Study.description),
    _key("ReferringPhysicianName", "PN", ST, M.NAME, Study.referring_physician),
    FindKey(
        "ModalitiesInStudy",
        "CS",
        ST,
        M.MODALITIES,
        Series.modality,
        lambda r: r.counts.get("modalities"),
    ),
    _count("NumberOfStudyRelatedSeries", ST, "study_series"),
    FindKey(
        "NumberOfStudyRelatedInstances", "IS", ST, M.RETURN, None, _col("Study", "num_instances")
    ),
    _key("SeriesInstanceUID", "UI", SE, M.UID, Series.series_uid, unique=True),
    _key("Modality", "CS", SE, M.TEXT, Series.modality),
    _key("SeriesNumber", "IS", SE, M.NUMBER, Series.series_number),
    _key("SeriesDescription", "LO", SE, M.TEXT, Series.description),
    _key("BodyPartExamined", "CS", SE, M.TEXT, Series.body_part),
    _count("NumberOfSeriesRelatedInstances", SE, "series_instances"),
    _key("SOPInstanceUID", "UI", IM, M.UID, Instance.sop_instance_uid, unique=True),
    _key("SOPClassUID", "UI", IM, M.UID, Instance.sop_class_uid),
    _key("InstanceNumber", "IS", IM, M.NUMBER, Instance.instance_number),
    _key("Rows", "US", IM, M.NUMBER, Instance.rows),
    _key("Columns", "US", IM, M.NUMBER, Instance.columns),
    _key("NumberOfFrames", "IS", IM, M.NUMBER, Instance.number_of_frames),
)
KEYS_BY_KEYWORD: dict[str, FindKey] = {key.keyword: key for key in FIND_KEYS}


def key_level(key: FindKey, model: Model) -> Level:
    """The level a key belongs to in ``model`` (Study Root folds patient keys into STUDY)."""
    if model is Model.STUDY_ROOT and key.level is Level.PATIENT:
        return Level.STUDY
    return key.level


class QueryError(Exception):
    """A request this SCP cannot process; ``status`` is the failure to answer."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


def institution_visibility(institution_id: int) -> ColumnElement[bool]:
    """What an institution's DICOM nodes may see: its readers' view plus its technicians' view.

    Built from :func:`visibility` itself (transient users, never saved) so the rule stays in
    one place: studies routed to the institution's pool, or sent by the institution.
    """
    reader = User(role=Role.READER, institution_id=institution_id)
    technician = User(role=Role.TECHNICIAN, institution_id=institution_id)
    return or_(visibility(reader), visibility(technician))


# -- parsing the identifier ------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    model: Model
    level: Level
    conditions: tuple[tuple[FindKey, str], ...]  # (key, non-universal value)
    requested: tuple[Any, ...]  # the identifier's elements (for the return keys)


def identifier_of(event: Event) -> Dataset:
    """The request's identifier, decoded; QueryError if it cannot be."""
    try:
        return event.identifier
    except Exception as exc:  # pynetdicom raises whatever the decoder raised
        raise QueryError(UNABLE_TO_PROCESS, f"identifier cannot be decoded: {exc}") from exc


def parse_identifier(identifier: Dataset | None, model: Model) -> Request:
    """Check Query/Retrieve Level (0008,0052) and collect the matching keys (PS3.4 C.2.2.1)."""
    if identifier is None:
        raise QueryError(UNABLE_TO_PROCESS, "no identifier")
    level_name = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    try:
        level = Level[level_name]
    except KeyError:
        raise QueryError(
            IDENTIFIER_DOES_NOT_MATCH, f"Query/Retrieve Level {level_name!r} not supported"
        ) from None
    if level not in LEVELS[model]:
        raise QueryError(IDENTIFIER_DOES_NOT_MATCH, f"level {level_name} not in the {model} model")
    conditions: list[tuple[FindKey, str]] = []
    requested = []
    for element in identifier:
        if element.tag.group in (0x0000, 0x0002) or element.keyword in (
            "QueryRetrieveLevel",
            "SpecificCharacterSet",
        ):
            continue
        requested.append(element)
        key = KEYS_BY_KEYWORD.get(element.keyword)
        if key is None or key.matching is Matching.RETURN or element.VR == "SQ":
            continue
        if key_level(key, model) > level:
            raise QueryError(
                IDENTIFIER_DOES_NOT_MATCH, f"{key.keyword} is below the {level.name} level"
            )
        value = _text_value(identifier, element)
        if value:
            conditions.append((key, value))
    return Request(model, level, tuple(conditions), tuple(requested))


def _text_value(identifier: Dataset, element: Any) -> str:
    if element.VR in ("PN", "LO", "SH", "LT", "ST", "UT", "UC"):
        text = decode_element(identifier, element.keyword)
    elif element.value is None:
        text = None
    elif element.VM > 1:
        text = "\\".join(str(v) for v in element.value)
    else:
        text = str(element.value)
    return (text or "").strip()


# -- the query --------------------------------------------------------------------------------


def _like(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _condition(key: FindKey, value: str) -> ColumnElement[bool] | None:
    column = key.column
    if key.matching is Matching.UID:
        uids = [v.strip() for v in value.split("\\") if v.strip()]
        return column.in_(uids)
    if key.matching is Matching.MODALITIES:
        wanted = [v.strip().upper() for v in value.split("\\") if v.strip()]
        return exists(select(Series.id).where(Series.study_pk == Study.id, column.in_(wanted)))
    if key.matching is Matching.NUMBER:
        try:
            return column == int(value)
        except ValueError:
            raise QueryError(UNABLE_TO_PROCESS, f"{key.keyword}: {value!r} is no number") from None
    if key.matching in (Matching.DATE, Matching.TIME):
        low, sep, high = value.partition("-")
        if not sep:
            return column == value if key.matching is Matching.DATE else column.startswith(value)
        conditions = []
        if low.strip():
            conditions.append(column >= low.strip())
        if high.strip():
            high = high.strip()
            # A time range's upper bound covers the whole of its last unit (1030 → 1030xx).
            conditions.append(
                column <= high if key.matching is Matching.DATE else column < high + "~"
            )
        if not conditions:
            return None
        return conditions[0] if len(conditions) == 1 else conditions[0] & conditions[1]
    if value.strip("*") == "":
        return None  # "*" matches everything, empty values included (C.2.2.2.4)
    pattern = _like(value)
    if key.matching is Matching.NAME:
        # Stored names keep their component groups (alphabetic=ideographic=phonetic): a value
        # matches any one group. Case-insensitive, as most PACS do for names.
        groups = [pattern, f"{pattern}=%", f"%={pattern}", f"%={pattern}=%"]
        return or_(*(column.ilike(p, escape="\\") for p in groups))
    if "*" in value or "?" in value:
        return column.like(pattern, escape="\\")
    return column == value


def _visible_studies(institution_id: int) -> Select[Any]:
    return (
        select(Study.id)
        .outerjoin(WorklistItem, WorklistItem.study_pk == Study.id)
        .where(institution_visibility(institution_id))
    )


def query_statement(request: Request, institution_id: int) -> Select[Any]:
    """One SELECT for the request's level, scoped to the institution, in a stable order."""
    where = [c for key, value in request.conditions if (c := _condition(key, value)) is not None]
    if request.level is Level.PATIENT:
        visible = _visible_studies(institution_id).where(Study.patient_pk == Patient.id)
        return (
            select(Patient).where(exists(visible), *where).order_by(Patient.patient_id, Patient.id)
        )
    entities: list[Any] = [Study, Patient]
    if request.level >= Level.SERIES:
        entities.append(Series)
    if request.level is Level.IMAGE:
        entities.append(Instance)
    statement = (
        select(*entities)
        .join(Patient, Study.patient_pk == Patient.id)
        .outerjoin(WorklistItem, WorklistItem.study_pk == Study.id)
        .where(institution_visibility(institution_id), *where)
    )
    order: list[Any] = [Study.study_date, Study.id]
    if request.level >= Level.SERIES:
        statement = statement.join(Series, Series.study_pk == Study.id)
        order += [Series.series_number, Series.id]
    if request.level is Level.IMAGE:
        statement = statement.join(Instance, Instance.series_pk == Series.id)
        order += [Instance.instance_number, Instance.id]
    return statement.order_by(*order)


class _Row:
    """One match: the ORM objects by class name, plus counts computed per page."""

    def __init__(self, objects: Sequence[Any]) -> None:
        for obj in objects:
            setattr(self, type(obj).__name__, obj)
        self.counts: dict[str, Any] = {}


def _add_counts(session: Session, rows: list[_Row], request: Request) -> None:
    """Count and list return keys for a page of rows, with one grouped query each."""
    wanted = {element.keyword for element in request.requested}
    if request.level is Level.PATIENT and "NumberOfPatientRelatedStudies" in wanted:
        ids = [row.Patient.id for row in rows]
        counts = dict(
            session.execute(
                select(Study.patient_pk, func.count(Study.id))
                .where(Study.patient_pk.in_(ids))
                .group_by(Study.patient_pk)
            ).all()
        )
        for row in rows:
            row.counts["patient_studies"] = counts.get(row.Patient.id, 0)
    if request.level is Level.STUDY and wanted & {
        "NumberOfStudyRelatedSeries",
        "ModalitiesInStudy",
    }:
        ids = [row.Study.id for row in rows]
        per_study: dict[int, list[str | None]] = {}
        for study_pk, modality in session.execute(
            select(Series.study_pk, Series.modality).where(Series.study_pk.in_(ids))
        ):
            per_study.setdefault(study_pk, []).append(modality)
        for row in rows:
            modalities = per_study.get(row.Study.id, [])
            row.counts["study_series"] = len(modalities)
            row.counts["modalities"] = sorted({m for m in modalities if m})
    if request.level is Level.SERIES and "NumberOfSeriesRelatedInstances" in wanted:
        ids = [row.Series.id for row in rows]
        counts = dict(
            session.execute(
                select(Instance.series_pk, func.count(Instance.id))
                .where(Instance.series_pk.in_(ids))
                .group_by(Instance.series_pk)
            ).all()
        )
        for row in rows:
            row.counts["series_instances"] = counts.get(row.Series.id, 0)


def _answer(row: _Row, request: Request, retrieve_ae: str) -> Dataset:
    """The C-FIND response identifier: the requested keys, filled where the index knows them."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = request.level.name
    ds.RetrieveAETitle = retrieve_ae
    for element in request.requested:
        key = KEYS_BY_KEYWORD.get(element.keyword)
        value = None
        if key is not None and key_level(key, request.model) <= request.level:
            value = key.value(row)
        _put(ds, element.tag, element.VR, value)
    # The unique keys of this level and those above it are always returned (C.4.1.1.3.1).
    for key in FIND_KEYS:
        if key.unique and key_level(key, request.model) <= request.level and key.keyword not in ds:
            if request.model is Model.STUDY_ROOT and key.keyword == "PatientID":
                continue  # not a unique key in the Study Root model
            _put(ds, key.keyword, key.vr, key.value(row))
    return ds


def _put(ds: Dataset, tag: Any, vr: str, value: Any) -> None:
    if vr == "SQ":
        ds.add_new(tag, vr, [])
        return
    if value is None or value == "" or value == []:
        ds.add_new(tag, vr, None)
    elif isinstance(value, list):
        ds.add_new(tag, vr, [str(v) for v in value])
    elif vr in ("US", "UL", "SS", "SL"):
        ds.add_new(tag, vr, int(value))
    else:
        ds.add_new(tag, vr, str(value))


#: Rows read per round trip while answering C-FIND.
PAGE = 200


def find_matches(
    session: Session, request: Request, institution_id: int, retrieve_ae: str
) -> Iterator[Dataset]:
    """The C-FIND answers, a page of rows at a time (large result sets never sit in memory)."""
    statement = query_statement(request, institution_id)
    offset = 0
    while True:
        rows = [_Row(r) for r in session.execute(statement.limit(PAGE).offset(offset)).all()]
        if not rows:
            return
        _add_counts(session, rows, request)
        for row in rows:
            yield _answer(row, request, retrieve_ae)
        if len(rows) < PAGE:
            return
        offset += PAGE


@dataclass(frozen=True)
class StoredInstance:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    object_key: str
    study_uid: str = ""
    patient: str = ""  # PatientID^^^Issuer (HL7 CX), for the audit trail


def retrieve_matches(
    session: Session, request: Request, institution_id: int
) -> list[StoredInstance]:
    """The instances a C-GET/C-MOVE identifier designates, among those the institution sees."""
    if request.level is Level.PATIENT and not any(
        k.keyword == "PatientID" for k, _ in request.conditions
    ):
        raise QueryError(IDENTIFIER_DOES_NOT_MATCH, "PATIENT level retrieve needs a Patient ID")
    if request.level is not Level.PATIENT:
        unique = next(k for k in FIND_KEYS if k.unique and k.level is request.level)
        if not any(k is unique for k, _ in request.conditions):
            raise QueryError(
                IDENTIFIER_DOES_NOT_MATCH, f"{request.level.name} retrieve needs {unique.keyword}"
            )
    image = Request(request.model, Level.IMAGE, request.conditions, ())
    statement = query_statement(image, institution_id).with_only_columns(
        Instance.sop_class_uid,
        Instance.sop_instance_uid,
        Instance.transfer_syntax_uid,
        Instance.object_key,
        Study.study_uid,
        Patient.patient_id + "^^^" + Patient.issuer,
    )
    return [StoredInstance(*row) for row in session.execute(statement).all()]


# -- destinations and presentation contexts ----------------------------------------------------


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int
    institution_id: int | None = None  # whose node it is


def shared_destinations() -> frozenset[str]:
    """AE titles any registered calling AE may move to (``RDX_MOVE_SHARED_DESTINATIONS``)."""
    from remote_dx.core.settings import get_settings

    text = get_settings().move_shared_destinations
    return frozenset(t.strip() for t in text.split(",") if t.strip())


def move_allowed(destination: Destination, institution: int, shared: frozenset[str]) -> bool:
    """Whether the calling AE's institution may send to ``destination``."""
    return destination.institution_id == institution or destination.ae_title in shared


def move_destination(session: Session, ae_title: str) -> Destination | None:
    """A known C-MOVE destination (PS3.4 C.4.2.1.4.2): a device or node with an address, or an
    institution's result-return AE; None when unknown."""
    device = session.scalar(
        select(Device).where(
            Device.ae_title == ae_title,
            Device.enabled.is_(True),
            Device.host.is_not(None),
            Device.port.is_not(None),
        )
    )
    if device is not None:
        return Destination(
            device.ae_title, str(device.host), int(device.port or 0), device.institution_id
        )
    institution = session.scalar(
        select(Institution).where(
            Institution.return_ae_title == ae_title,
            Institution.return_host.is_not(None),
            Institution.return_port.is_not(None),
        )
    )
    if institution is not None:
        return Destination(
            ae_title,
            str(institution.return_host),
            int(institution.return_port or 0),
            institution.id,
        )
    return None


def move_contexts(instances: Sequence[StoredInstance]) -> list[PresentationContext]:
    """Contexts to propose to a C-MOVE destination: each SOP class in its stored syntax (and,
    for uncompressed ones, both little-endian uncompressed syntaxes); at most 128 (PS3.8
    §9.3.2.2)."""
    wanted: dict[tuple[str, tuple[str, ...]], None] = {}
    for instance in instances:
        syntax = instance.transfer_syntax_uid
        if syntax in UNCOMPRESSED:
            wanted[(instance.sop_class_uid, tuple(UNCOMPRESSED))] = None
        else:
            wanted[(instance.sop_class_uid, (syntax,))] = None
    contexts = [build_context(sop, list(syntaxes)) for sop, syntaxes in wanted]
    if len(contexts) > 128:
        log.warning("C-MOVE needs %d presentation contexts; proposing the first 128", len(contexts))
    return contexts[:128]


def load_instance(store: ObjectStore, instance: StoredInstance) -> Dataset:
    """The stored object as a data set (pixel data left as stored), file meta included."""
    return dcmread(BytesIO(store.get(instance.object_key)), force=True)


def fit_for_get(ds: Dataset, accepted: Sequence[PresentationContext]) -> Dataset:
    """Decode a compressed instance when the C-GET requestor accepted no context for its stored
    syntax but one uncompressed (PS3.4 C.4.3.1.3; lossless either way)."""
    syntax = ds.file_meta.TransferSyntaxUID
    mine = [c for c in accepted if c.abstract_syntax == ds.SOPClassUID and c.as_scu]
    if not syntax.is_compressed or any(c.transfer_syntax[0] == syntax for c in mine):
        return ds
    if any(c.transfer_syntax[0] in UNCOMPRESSED for c in mine):
        ds.decompress(generate_instance_uid=False)  # lossless: still the same instance
    return ds


# -- the SCP ----------------------------------------------------------------------------------


#: ``audit(event, action, fields)``: write one audit record (IHE ATNA) before data leaves;
#: raising refuses the request (patient data is not disclosed unaudited).
AuditHook = Callable[[Event, str, dict[str, Any]], None]


class QueryRetrieveSCP:
    """EVT_C_FIND / EVT_C_GET / EVT_C_MOVE handlers; ``institution_of`` names the calling AE's
    institution for an association (None: not registered, so nothing matches)."""

    def __init__(
        self,
        store: ObjectStore,
        sessions: sessionmaker[Session],
        institution_of: Callable[[Any], int | None],
        ae_title: Callable[[], str],
        audit: AuditHook | None = None,
        shared: Callable[[], frozenset[str]] = shared_destinations,
    ) -> None:
        self.store = store
        self.shared_destinations = shared
        self.sessions = sessions
        self.institution_of = institution_of
        self.ae_title = ae_title
        self._audit = audit

    def audit(self, event: Event, action: str, fields: dict[str, Any], status: int) -> None:
        """Record the request; QueryError(``status``) when the trail cannot be written."""
        if self._audit is None:
            return
        try:
            self._audit(event, action, fields)
        except Exception as exc:
            log.error("audit record for %s not written, request refused: %s", action, exc)
            raise QueryError(status, "audit trail unavailable, retry later") from exc

    def on_find(self, event: Event) -> Iterator[tuple[int, Dataset | None]]:
        """EVT_C_FIND: yield (0xFF00, identifier) per match; pynetdicom sends the final 0x0000."""
        model = FIND_SOP_CLASSES.get(event.request.AffectedSOPClassUID)
        institution = self.institution_of(event.assoc)
        calling = event.assoc.requestor.ae_title
        try:
            if model is None or institution is None:
                raise QueryError(UNABLE_TO_PROCESS, "query model not supported")
            request = parse_identifier(identifier_of(event), model)
            keys = {key.keyword: value for key, value in request.conditions}
            self.audit(
                event,
                "query",
                {
                    "method": "C-FIND",
                    "object_type": "query",
                    "object_id": keys.get("StudyInstanceUID"),
                    "detail": {"model": str(model), "level": request.level.name, "keys": keys},
                },
                OUT_OF_RESOURCES_MATCHES,
            )
            count = 0
            with self.sessions() as session:
                for answer in find_matches(session, request, institution, self.ae_title()):
                    if event.is_cancelled:
                        yield CANCEL, None
                        return
                    count += 1
                    yield PENDING, answer
            log.info("C-FIND %s %s from %s: %d matches", model, request.level.name, calling, count)
        except QueryError as exc:
            log.warning("C-FIND from %s refused: %s", calling, exc.comment)
            yield _failure(exc.status, exc.comment)
        except SQLAlchemyError as exc:
            log.error("C-FIND from %s: database unavailable: %s", calling, exc)
            yield _failure(OUT_OF_RESOURCES_MATCHES, "database unavailable, retry later")

    def _matches(
        self, event: Event, models: dict[UID, Model], destination: str | None = None
    ) -> list[StoredInstance]:
        model = models.get(event.request.AffectedSOPClassUID)
        institution = self.institution_of(event.assoc)
        if model is None or institution is None:
            raise QueryError(UNABLE_TO_PROCESS, "retrieve model not supported")
        request = parse_identifier(identifier_of(event), model)
        with self.sessions() as session:
            matches = retrieve_matches(session, request, institution)
        if len(matches) > MAX_SUBOPERATIONS:
            raise QueryError(
                OUT_OF_RESOURCES_SUBOPS, f"{len(matches)} instances; retrieve by series"
            )
        if matches:
            studies = sorted({m.study_uid for m in matches})
            self.audit(
                event,
                "download",
                {
                    "method": "C-MOVE" if destination is not None else "C-GET",
                    "object_type": "study",
                    "object_id": ",".join(studies),
                    "patient": matches[0].patient,
                    "detail": {
                        "instances": len(matches),
                        "studies": studies,
                        "patients": sorted({m.patient for m in matches}),
                        "level": request.level.name,
                        **({"destination": destination} if destination else {}),
                    },
                },
                OUT_OF_RESOURCES_SUBOPS,
            )
        return matches

    def on_get(self, event: Event) -> Iterator[Any]:
        """EVT_C_GET: yield the number of sub-operations, then (0xFF00, data set) per instance."""
        calling = event.assoc.requestor.ae_title
        try:
            matches = self._matches(event, GET_SOP_CLASSES)
        except QueryError as exc:
            log.warning("C-GET from %s refused: %s", calling, exc.comment)
            yield 1
            yield _failure(exc.status, exc.comment)
            return
        except SQLAlchemyError as exc:
            log.error("C-GET from %s: database unavailable: %s", calling, exc)
            yield 1
            yield _failure(OUT_OF_RESOURCES_SUBOPS, "database unavailable, retry later")
            return
        log.info("C-GET from %s: %d instances", calling, len(matches))
        yield len(matches)
        accepted = event.assoc.accepted_contexts
        for instance in matches:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield from self._sub_operation(instance, lambda ds: fit_for_get(ds, accepted))

    def on_move(self, event: Event) -> Iterator[Any]:
        """EVT_C_MOVE: yield the destination, the number of sub-operations, then the instances."""
        calling = event.assoc.requestor.ae_title
        target = str(event.move_destination or "").strip()
        try:
            with self.sessions() as session:
                destination = move_destination(session, target)
        except SQLAlchemyError as exc:
            log.error("C-MOVE from %s: database unavailable: %s", calling, exc)
            destination = None
        if destination is None:
            log.warning("C-MOVE from %s: destination %r unknown", calling, target)
            yield None, None  # pynetdicom answers 0xA801 Move Destination unknown
            return
        address = (destination.host, destination.port)
        try:
            institution = self.institution_of(event.assoc)
            if institution is not None and not move_allowed(
                destination, institution, self.shared_destinations()
            ):
                raise QueryError(
                    NOT_AUTHORIZED, f"{destination.ae_title} is not your institution's node"
                )
            matches = self._matches(event, MOVE_SOP_CLASSES, destination.ae_title)
        except (QueryError, SQLAlchemyError) as exc:
            if isinstance(exc, QueryError):
                status, comment = exc.status, exc.comment
            else:
                status, comment = OUT_OF_RESOURCES_SUBOPS, "database unavailable, retry later"
            log.warning("C-MOVE from %s refused: %s", calling, comment)
            # pynetdicom associates with the destination before it reads a status, so the
            # failure travels after a bare Verification association (no DIMSE message, no data;
            # if the destination does not answer, the caller sees 0xA801 instead).
            yield (*address, {"contexts": [build_context(Verification)]})
            yield 1
            yield _failure(status, comment)
            return
        log.info(
            "C-MOVE from %s: %d instances to %s (%s:%d)",
            calling,
            len(matches),
            destination.ae_title,
            *address,
        )
        yield (*address, {"contexts": move_contexts(matches)})
        yield len(matches)
        for instance in matches:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield from self._sub_operation(instance, lambda ds: ds)

    def _sub_operation(
        self, instance: StoredInstance, fit: Callable[[Dataset], Dataset]
    ) -> Iterator[tuple[int, Dataset]]:
        try:
            ds = fit(load_instance(self.store, instance))
        except Exception as exc:  # a missing or unreadable object fails this sub-operation only
            log.error(
                "retrieve %s: cannot read %s: %s",
                instance.sop_instance_uid,
                instance.object_key,
                exc,
            )
            failed = Dataset()
            failed.SOPInstanceUID = instance.sop_instance_uid
            failed.SOPClassUID = instance.sop_class_uid
            yield PENDING, failed  # pynetdicom's C-STORE of this stub fails and is counted
            return
        yield PENDING, ds


def _failure(status: int, comment: str) -> tuple[Dataset, None]:
    """A failure status with its Error Comment (0000,0902), as pynetdicom takes it from a yield."""
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment.replace("\\", "/")[:64]
    return ds, None


def supported_qr_contexts() -> list[PresentationContext]:
    """The Query/Retrieve SOP classes the receiver accepts (PS3.4 C.6)."""
    return [
        build_context(sop_class, QR_TRANSFER_SYNTAXES)
        for sop_class in (*FIND_SOP_CLASSES, *MOVE_SOP_CLASSES, *GET_SOP_CLASSES)
    ]
