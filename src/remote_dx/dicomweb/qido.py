"""QIDO-RS (PS3.18 §10.6): search for studies, series and instances, from the index only.

Nothing here reads an object from storage: every matching key and return key is a column of the
index (``patients``, ``studies``, ``series``, ``instances``), so a search costs one page query plus
one grouped count query, whatever the archive's size.

Matching (PS3.4 §C.2.2.2 as PS3.18 §8.3.4 applies it):

- single value: exact; with ``*`` / ``?`` wildcards for text keys (PS3.4 C.2.2.2.4);
- UID list: ``StudyInstanceUID=1.2.3,1.2.4`` (or ``\\``-separated, PS3.4 C.2.2.2.2);
- range: ``StudyDate=20240101-20241231``, ``-20241231``, ``20240101-`` (C.2.2.2.5); StudyTime too;
- ``ModalitiesInStudy=CT,MR``: any series of one of those modalities;
- PatientName / ReferringPhysicianName: case-insensitive, matched against each component group
  (``Alphabetic=Ideographic=Phonetic``) so ``王*`` finds ``Wang^Xiaodong=王^小东``; with
  ``fuzzymatching=true`` a pattern also matches the start of any name component (given name).

Keys may be keywords or tags (``PatientID`` or ``00100020``). A matching key the index does not
hold is ignored and named in a ``Warning: 299`` header (PS3.18 §8.3.4.1); ``includefield`` names
return keys or ``all``. Results come newest study first; ``limit``/``offset`` page them and at most
:data:`MAX_RESULTS` are returned at once (with a Warning when more matched).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from sqlalchemy import ColumnElement, Select, exists, func, or_, select
from sqlalchemy.orm import Session

from remote_dx.core.models import Instance, Patient, Series, Study, User
from remote_dx.dicomweb.access import scoped
from remote_dx.dicomweb.dicomjson import JsonDataset, attribute, tag_key
from remote_dx.dicomweb.multipart import BadRequest

MAX_RESULTS = 1000
CHARSET = "ISO_IR 192"  # the JSON is UTF-8 whatever the instances' character sets were


class Level(StrEnum):
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


class Kind(StrEnum):
    UID = "uid"
    TEXT = "text"
    NAME = "name"
    DATE = "date"
    TIME = "time"
    INT = "int"
    MODALITIES = "modalities"


@dataclass(frozen=True)
class Key:
    """A matching key: the index column it compares, how, and at which level it lives."""

    keyword: str
    level: Level
    kind: Kind
    column: Any


_KEYS: dict[str, Key] = {
    key.keyword: key
    for key in (
        Key("StudyInstanceUID", Level.STUDY, Kind.UID, Study.study_uid),
        Key("PatientID", Level.STUDY, Kind.TEXT, Patient.patient_id),
        Key("IssuerOfPatientID", Level.STUDY, Kind.TEXT, Patient.issuer),
        Key("PatientName", Level.STUDY, Kind.NAME, Patient.name),
        Key("PatientBirthDate", Level.STUDY, Kind.DATE, Patient.birth_date),
        Key("PatientSex", Level.STUDY, Kind.TEXT, Patient.sex),
        Key("StudyDate", Level.STUDY, Kind.DATE, Study.study_date),
        Key("StudyTime", Level.STUDY, Kind.TIME, Study.study_time),
        Key("AccessionNumber", Level.STUDY, Kind.TEXT, Study.accession_number),
        Key("ModalitiesInStudy", Level.STUDY, Kind.MODALITIES, Series.modality),
        Key("StudyDescription", Level.STUDY, Kind.TEXT, Study.description),
        Key("ReferringPhysicianName", Level.STUDY, Kind.NAME, Study.referring_physician),
        Key("StudyID", Level.STUDY, Kind.TEXT, Study.dicom_study_id),
        Key("SeriesInstanceUID", Level.SERIES, Kind.UID, Series.series_uid),
        Key("Modality", Level.SERIES, Kind.TEXT, Series.modality),
        Key("SeriesNumber", Level.SERIES, Kind.INT, Series.series_number),
        Key("SeriesDescription", Level.SERIES, Kind.TEXT, Series.description),
        Key("BodyPartExamined", Level.SERIES, Kind.TEXT, Series.body_part),
        Key("SOPInstanceUID", Level.INSTANCE, Kind.UID, Instance.sop_instance_uid),
        Key("SOPClassUID", Level.INSTANCE, Kind.UID, Instance.sop_class_uid),
        Key("InstanceNumber", Level.INSTANCE, Kind.INT, Instance.instance_number),
        Key("Rows", Level.INSTANCE, Kind.INT, Instance.rows),
        Key("Columns", Level.INSTANCE, Kind.INT, Instance.columns),
        Key("NumberOfFrames", Level.INSTANCE, Kind.INT, Instance.number_of_frames),
    )
}

_LEVEL_RANK = {Level.STUDY: 0, Level.SERIES: 1, Level.INSTANCE: 2}


@dataclass(frozen=True)
class ReturnKey:
    keyword: str
    vr: str
    level: Level
    value: Callable[[Any], Any]
    default: bool = True  # returned without includefield (PS3.18 Tables 10.6.3-3/-4/-5)

    @property
    def tag(self) -> str:
        return tag_key(int(tag_for_keyword(self.keyword) or 0))


def _retrieve_url(level: Level) -> Callable[[Any], Any]:
    def url(row: Any) -> str:
        path = f"{row.base}/studies/{row.study_uid}"
        if level is not Level.STUDY:
            path += f"/series/{row.series_uid}"
        if level is Level.INSTANCE:
            path += f"/instances/{row.sop_instance_uid}"
        return path

    return url


_RETURN_KEYS: tuple[ReturnKey, ...] = (
    ReturnKey("StudyDate", "DA", Level.STUDY, lambda r: r.study_date),
    ReturnKey("StudyTime", "TM", Level.STUDY, lambda r: r.study_time),
    ReturnKey("AccessionNumber", "SH", Level.STUDY, lambda r: r.accession_number),
    ReturnKey("InstanceAvailability", "CS", Level.STUDY, lambda r: "ONLINE"),
    ReturnKey("ModalitiesInStudy", "CS", Level.STUDY, lambda r: r.modalities_in_study),
    ReturnKey("ReferringPhysicianName", "PN", Level.STUDY, lambda r: r.referring_physician),
    ReturnKey("StudyDescription", "LO", Level.STUDY, lambda r: r.study_description),
    ReturnKey("RetrieveURL", "UR", Level.STUDY, _retrieve_url(Level.STUDY)),
    ReturnKey("PatientName", "PN", Level.STUDY, lambda r: r.patient_name),
    ReturnKey("PatientID", "LO", Level.STUDY, lambda r: r.patient_id),
    ReturnKey("IssuerOfPatientID", "LO", Level.STUDY, lambda r: r.issuer, default=False),
    ReturnKey("PatientBirthDate", "DA", Level.STUDY, lambda r: r.birth_date),
    ReturnKey("PatientSex", "CS", Level.STUDY, lambda r: r.sex),
    ReturnKey("StudyInstanceUID", "UI", Level.STUDY, lambda r: r.study_uid),
    ReturnKey("StudyID", "SH", Level.STUDY, lambda r: r.dicom_study_id),
    ReturnKey("NumberOfStudyRelatedSeries", "IS", Level.STUDY, lambda r: r.study_series),
    ReturnKey("NumberOfStudyRelatedInstances", "IS", Level.STUDY, lambda r: r.study_instances),
    ReturnKey("Modality", "CS", Level.SERIES, lambda r: r.modality),
    ReturnKey("SeriesDescription", "LO", Level.SERIES, lambda r: r.series_description),
    ReturnKey("RetrieveURL", "UR", Level.SERIES, _retrieve_url(Level.SERIES)),
    ReturnKey("SeriesInstanceUID", "UI", Level.SERIES, lambda r: r.series_uid),
    ReturnKey("SeriesNumber", "IS", Level.SERIES, lambda r: r.series_number),
    ReturnKey("BodyPartExamined", "CS", Level.SERIES, lambda r: r.body_part, default=False),
    ReturnKey(
        "NumberOfSeriesRelatedInstances", "IS", Level.SERIES, lambda r: r.series_instances
    ),
    ReturnKey("SOPClassUID", "UI", Level.INSTANCE, lambda r: r.sop_class_uid),
    ReturnKey("SOPInstanceUID", "UI", Level.INSTANCE, lambda r: r.sop_instance_uid),
    ReturnKey("InstanceAvailability", "CS", Level.INSTANCE, lambda r: "ONLINE"),
    ReturnKey("RetrieveURL", "UR", Level.INSTANCE, _retrieve_url(Level.INSTANCE)),
    ReturnKey("InstanceNumber", "IS", Level.INSTANCE, lambda r: r.instance_number),
    ReturnKey("Rows", "US", Level.INSTANCE, lambda r: r.rows),
    ReturnKey("Columns", "US", Level.INSTANCE, lambda r: r.columns),
    ReturnKey("NumberOfFrames", "IS", Level.INSTANCE, lambda r: r.number_of_frames),
    ReturnKey(
        "AvailableTransferSyntaxUID", "UI", Level.INSTANCE, lambda r: r.transfer_syntax_uid,
        default=False,
    ),
)  # fmt: skip

_CONTROL = frozenset({"limit", "offset", "includefield", "fuzzymatching", "orderby"})
_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")


@dataclass
class Query:
    """A parsed QIDO-RS request: matching keys, return keys, paging."""

    level: Level
    study_uid: str | None = None  # from the path: /studies/{study}/series…
    series_uid: str | None = None
    matches: list[tuple[Key, str]] = field(default_factory=list)
    include: set[str] = field(default_factory=set)
    include_all: bool = False
    fuzzy: bool = False
    limit: int = MAX_RESULTS
    offset: int = 0
    warnings: list[str] = field(default_factory=list)


def _keyword(name: str) -> str | None:
    """A query parameter's attribute keyword (``PatientID`` or ``00100020``), else None."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        return keyword_for_tag(int(name, 16)) or None
    if name in _KEYS or tag_for_keyword(name) is not None:
        return name
    return None


def _non_negative(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, not {value!r}") from None
    if number < 0:
        raise BadRequest(f"{name} must not be negative")
    return number


def parse_query(
    params: Iterable[tuple[str, str]],
    level: Level,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> Query:
    """Read the query string (PS3.18 §8.3.4). Raises BadRequest for malformed values."""
    query = Query(level, study_uid, series_uid)
    for name, value in params:
        lowered = name.lower()
        if lowered in _CONTROL:
            if lowered == "limit":
                query.limit = min(_non_negative("limit", value), MAX_RESULTS)
            elif lowered == "offset":
                query.offset = _non_negative("offset", value)
            elif lowered == "fuzzymatching":
                query.fuzzy = value.strip().lower() == "true"
            elif lowered == "includefield":
                for item in value.split(","):
                    item = item.strip()
                    if item.lower() == "all":
                        query.include_all = True
                    elif item:
                        keyword = _keyword(item)
                        if keyword is None:
                            raise BadRequest(f"includefield: unknown attribute {item!r}")
                        query.include.add(keyword)
            continue
        keyword = _keyword(name)
        if keyword is None:
            raise BadRequest(f"unknown query parameter {name!r}")
        key = _KEYS.get(keyword)
        if key is None or _LEVEL_RANK[key.level] > _LEVEL_RANK[level]:
            query.warnings.append(f"299 remote_dx: matching on {keyword} is not supported; ignored")
            continue
        _check_value(key, value)
        query.matches.append((key, value))
    return query


def _check_value(key: Key, value: str) -> None:
    if key.kind in (Kind.DATE, Kind.TIME):
        pattern = _DATE if key.kind is Kind.DATE else _TIME
        low, sep, high = value.partition("-")
        bounds = [low, high] if sep else [value]
        if not any(bounds) or not all(pattern.match(b) for b in bounds if b):
            raise BadRequest(f"{key.keyword}: {value!r} is neither a value nor a range")
    elif key.kind is Kind.INT and not value.strip().lstrip("-").isdigit():
        raise BadRequest(f"{key.keyword} must be a whole number, not {value!r}")


def _like(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in re.split(r"[,\\]", value) if v.strip()]


def _condition(key: Key, value: str, fuzzy: bool) -> ColumnElement[bool] | None:
    column = key.column
    if key.kind is Kind.UID:
        uids = _split_list(value)
        return column.in_(uids) if len(uids) > 1 else column == (uids[0] if uids else "")
    if key.kind is Kind.MODALITIES:
        return exists(
            select(Series.id).where(Series.study_pk == Study.id, Series.modality.in_(
                [m.upper() for m in _split_list(value)]
            ))
        )  # fmt: skip
    if key.kind is Kind.INT:
        return column == int(value)
    if key.kind in (Kind.DATE, Kind.TIME):
        low, sep, high = value.partition("-")
        if not sep:
            return column == value if key.kind is Kind.DATE else column.startswith(value)
        conditions = []
        if low:
            conditions.append(column >= low)
        if high:
            # A time range's upper bound includes the whole of its last unit (1030 → 1030xx).
            conditions.append(column <= high if key.kind is Kind.DATE else column < high + "~")
        return conditions[0] if len(conditions) == 1 else conditions[0] & conditions[1]
    if value.strip("*") == "":
        return None  # "*" matches everything, empty values included (C.2.2.2.4)
    if key.kind is Kind.NAME:
        pattern = _like(value)
        patterns = [pattern, f"{pattern}=%", f"%={pattern}", f"%={pattern}=%"]
        if fuzzy:
            stem = pattern if pattern.endswith("%") else pattern + "%"
            patterns += [stem, f"%^{stem}", f"% {stem}", f"%={stem}"]
        return or_(*(column.ilike(p, escape="\\") for p in patterns))
    if _has_wildcard(value):
        return column.like(_like(value), escape="\\")
    return column == value


def _includes(query: Query, level: Level) -> bool:
    """Whether a level's attributes are part of the answer at all."""
    if level is query.level or query.include_all:
        return True
    # Attributes of the levels above: by default when not fixed by the path (PS3.18 §10.6.3.3.2).
    if level is Level.STUDY and query.study_uid is None:
        return True
    return level is Level.SERIES and query.level is Level.INSTANCE and query.series_uid is None


def _return_keys(query: Query) -> list[ReturnKey]:
    chosen = []
    for key in _RETURN_KEYS:
        if _LEVEL_RANK[key.level] > _LEVEL_RANK[query.level]:
            continue
        explicit = query.include_all or key.keyword in query.include
        if explicit or (key.default and _includes(query, key.level)):
            chosen.append(key)
    return chosen


@dataclass
class Row:
    """One result row with every column any return key may read."""

    base: str
    values: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None


_STUDY_COLUMNS = (
    Study.id.label("study_pk"),
    Study.study_uid.label("study_uid"),
    Study.study_date.label("study_date"),
    Study.study_time.label("study_time"),
    Study.accession_number.label("accession_number"),
    Study.description.label("study_description"),
    Study.referring_physician.label("referring_physician"),
    Study.dicom_study_id.label("dicom_study_id"),
    Study.num_instances.label("study_instances"),
    Patient.patient_id.label("patient_id"),
    Patient.issuer.label("issuer"),
    Patient.name.label("patient_name"),
    Patient.birth_date.label("birth_date"),
    Patient.sex.label("sex"),
)
_SERIES_COLUMNS = (
    Series.id.label("series_pk"),
    Series.series_uid.label("series_uid"),
    Series.modality.label("modality"),
    Series.series_number.label("series_number"),
    Series.description.label("series_description"),
    Series.body_part.label("body_part"),
)
_INSTANCE_COLUMNS = (
    Instance.sop_instance_uid.label("sop_instance_uid"),
    Instance.sop_class_uid.label("sop_class_uid"),
    Instance.instance_number.label("instance_number"),
    Instance.rows.label("rows"),
    Instance.columns.label("columns"),
    Instance.number_of_frames.label("number_of_frames"),
    Instance.transfer_syntax_uid.label("transfer_syntax_uid"),
)


def _statement(query: Query, user: User) -> Select[Any]:
    columns: list[Any] = list(_STUDY_COLUMNS)
    if query.level is Level.STUDY:
        statement = select(*columns).select_from(Study)
    elif query.level is Level.SERIES:
        columns += _SERIES_COLUMNS
        statement = select(*columns).select_from(Series).join(Study, Study.id == Series.study_pk)
    else:
        columns += _SERIES_COLUMNS + _INSTANCE_COLUMNS
        statement = (
            select(*columns)
            .select_from(Instance)
            .join(Series, Series.id == Instance.series_pk)
            .join(Study, Study.id == Series.study_pk)
        )
    statement = statement.join(Patient, Patient.id == Study.patient_pk)
    if query.study_uid is not None:
        statement = statement.where(Study.study_uid == query.study_uid)
    if query.series_uid is not None:
        statement = statement.where(Series.series_uid == query.series_uid)
    for key, value in query.matches:
        condition = _condition(key, value, query.fuzzy)
        if condition is not None:
            statement = statement.where(condition)
    statement = scoped(statement, user)
    if query.level is Level.STUDY:
        return statement.order_by(Study.study_date.desc(), Study.study_time.desc(), Study.id.desc())
    order: list[Any] = [Study.study_date.desc(), Study.id.desc()] if query.study_uid is None else []
    order += [Series.series_number, Series.id]
    if query.level is Level.INSTANCE:
        order += [Instance.instance_number, Instance.id]
    return statement.order_by(*order)


@dataclass
class SearchResult:
    datasets: list[JsonDataset]
    warnings: list[str]
    # True when the path named a study or series the user cannot see (→ 404, not an empty list).
    parent_missing: bool = False


def search(session: Session, user: User, query: Query, base: str) -> SearchResult:
    """Run a QIDO-RS query; the JSON datasets of the page, and warnings for the header."""
    if query.limit == 0:
        return SearchResult([], query.warnings)
    statement = _statement(query, user).limit(query.limit + 1).offset(query.offset)
    rows = [Row(base, dict(row._mapping)) for row in session.execute(statement)]
    warnings = list(query.warnings)
    if len(rows) > query.limit:
        rows = rows[: query.limit]
        if query.limit == MAX_RESULTS:
            warnings.append(
                f"299 remote_dx: more than {MAX_RESULTS} results; ask for the next page with offset"
            )
    keys = _return_keys(query)
    wanted = {k.keyword for k in keys}
    if rows and wanted & {"ModalitiesInStudy", "NumberOfStudyRelatedSeries"}:
        _add_study_counts(session, rows)
    if rows and "NumberOfSeriesRelatedInstances" in wanted:
        _add_series_counts(session, rows)
    parent_missing = False
    if not rows and query.offset == 0 and (query.study_uid or query.series_uid):
        parent_missing = not _parent_visible(session, user, query)
    return SearchResult([_dataset(row, keys) for row in rows], warnings, parent_missing)


def _parent_visible(session: Session, user: User, query: Query) -> bool:
    statement = select(Study.id).select_from(Study).where(Study.study_uid == query.study_uid)
    if query.series_uid is not None:
        statement = statement.join(Series, Series.study_pk == Study.id).where(
            Series.series_uid == query.series_uid
        )
    return session.execute(scoped(statement, user).limit(1)).first() is not None


def _add_study_counts(session: Session, rows: Sequence[Row]) -> None:
    pks = {row.study_pk for row in rows}
    modalities: dict[int, list[str]] = {pk: [] for pk in pks}
    counts: dict[int, int] = dict.fromkeys(pks, 0)
    statement = (
        select(Series.study_pk, Series.modality, func.count())
        .where(Series.study_pk.in_(pks))
        .group_by(Series.study_pk, Series.modality)
    )
    for study_pk, modality, count in session.execute(statement):
        counts[study_pk] += count
        if modality and modality not in modalities[study_pk]:
            modalities[study_pk].append(modality)
    for row in rows:
        row.values["modalities_in_study"] = sorted(modalities[row.study_pk])
        row.values["study_series"] = counts[row.study_pk]


def _add_series_counts(session: Session, rows: Sequence[Row]) -> None:
    pks = {row.series_pk for row in rows}
    statement = (
        select(Instance.series_pk, func.count())
        .where(Instance.series_pk.in_(pks))
        .group_by(Instance.series_pk)
    )
    counts: dict[int, int] = {pk: count for pk, count in session.execute(statement)}
    for row in rows:
        row.values["series_instances"] = counts.get(row.series_pk, 0)


def _dataset(row: Row, keys: Sequence[ReturnKey]) -> JsonDataset:
    out: JsonDataset = {"00080005": {"vr": "CS", "Value": [CHARSET]}}
    for key in keys:
        out[key.tag] = attribute(key.vr, key.value(row))
    return dict(sorted(out.items()))
