"""De-identified export of a study: DICOM PS3.15 Annex E, Basic Application Level Confidentiality
Profile, for teaching files or a consultation outside the 医共体.

What each instance goes through (PS3.15 E.1.1 and Table E.1-1, basic profile, no options):

* the attributes of :data:`ACTIONS` are removed (X), emptied (Z) or replaced by a dummy (D): the
  patient's name and ID become a pseudonym (the same for the whole export), identifying dates
  and times go, as do institution, device, operator and physician names, free-text comments,
  descriptions and request details;
* every UID (VR UI) that is not a well-known DICOM UID (``1.2.840.10008.…``: SOP classes, transfer
  syntaxes, coding schemes) is replaced (U) by a new one derived from the original and a random
  secret of this export — consistently, so the study, series, frames of reference and references
  between instances still fit together, and the originals cannot be recomputed;
* what the table does not name is cleaned by kind, erring towards removal: person names are
  emptied, other dates and times removed, free text (LO, SH, ST, LT, UT, UC, AS) removed unless
  it is on the short :data:`SAFE_TEXT` list of technical attributes; codes (CS) and numbers kept;
* private attributes, curves (50xx) and overlay data/comments (60xx) are removed (E.3.1, E.3.10
  are options not offered here), and File Meta (0002,0016) Source AE Title with them;
* sequences are walked item by item with the same rules;
* Patient Identity Removed (0012,0062) YES, De-identification Method (0012,0063) and its Code
  Sequence (0012,0064, DCM 113100), Longitudinal Temporal Information Modified (0028,0303)
  REMOVED are set (PS3.3 C.7.1.1, PS3.15 E.1.1 items 6-8).

Burned-in Annotation (0028,0301) YES means identifying text is in the pixels, which this profile
would have to clean; this export does not clean pixels, so such instances are left out and
listed (E.1.1 item 4 and E.3.1). Pixel data itself is passed through byte for byte.
"""

from __future__ import annotations

import io
import logging
import secrets
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from remote_dx.core.errors import NotFound
from remote_dx.core.models import Instance, Series, Study, WorklistItem
from remote_dx.storage.base import ObjectNotFound, ObjectStore

log = logging.getLogger(__name__)

#: PS3.15 Table E.1-1 actions of the basic profile used here.
REMOVE, EMPTY, DUMMY, KEEP = "X", "Z", "D", "K"

#: Attributes named by PS3.15 Table E.1-1 (basic profile column) and what happens to them.
#: UIDs are handled generally (U); anything identifying left unnamed falls to the VR rules.
ACTIONS: dict[str, str] = {
    # Patient
    "PatientName": DUMMY,
    "PatientID": DUMMY,
    "IssuerOfPatientID": REMOVE,
    "IssuerOfPatientIDQualifiersSequence": REMOVE,
    "PatientBirthDate": EMPTY,
    "PatientBirthTime": REMOVE,
    "PatientSex": EMPTY,
    "PatientAge": REMOVE,
    "PatientSize": REMOVE,
    "PatientWeight": REMOVE,
    "PatientAddress": REMOVE,
    "PatientTelephoneNumbers": REMOVE,
    "PatientMotherBirthName": REMOVE,
    "PatientBirthName": REMOVE,
    "OtherPatientIDs": REMOVE,
    "OtherPatientIDsSequence": REMOVE,
    "OtherPatientNames": REMOVE,
    "PatientComments": REMOVE,
    "PatientReligiousPreference": REMOVE,
    "PatientInsurancePlanCodeSequence": REMOVE,
    "PatientState": REMOVE,
    "PregnancyStatus": REMOVE,
    "MedicalAlerts": REMOVE,
    "Allergies": REMOVE,
    "SmokingStatus": REMOVE,
    "AdditionalPatientHistory": REMOVE,
    "EthnicGroup": REMOVE,
    "Occupation": REMOVE,
    "MilitaryRank": REMOVE,
    "BranchOfService": REMOVE,
    "CountryOfResidence": REMOVE,
    "RegionOfResidence": REMOVE,
    "MedicalRecordLocator": REMOVE,
    "ResponsiblePerson": REMOVE,
    "ResponsibleOrganization": REMOVE,
    "SpecialNeeds": REMOVE,
    "CurrentPatientLocation": REMOVE,
    "AdmittingDiagnosesDescription": REMOVE,
    "ReferencedPatientSequence": REMOVE,
    "ReferencedPatientPhotoSequence": REMOVE,
    # Study, series, request
    "StudyDate": EMPTY,
    "StudyTime": EMPTY,
    "AccessionNumber": EMPTY,
    "StudyID": EMPTY,
    "StudyDescription": REMOVE,
    "SeriesDate": REMOVE,
    "SeriesTime": REMOVE,
    "SeriesDescription": REMOVE,
    "AcquisitionDate": REMOVE,
    "AcquisitionTime": REMOVE,
    "AcquisitionDateTime": REMOVE,
    "ContentDate": EMPTY,
    "ContentTime": EMPTY,
    "InstanceCreationDate": REMOVE,
    "InstanceCreationTime": REMOVE,
    "TimezoneOffsetFromUTC": REMOVE,
    "ReferringPhysicianName": EMPTY,
    "ReferringPhysicianAddress": REMOVE,
    "ReferringPhysicianTelephoneNumbers": REMOVE,
    "ReferringPhysicianIdentificationSequence": REMOVE,
    "PhysiciansOfRecord": REMOVE,
    "PhysiciansOfRecordIdentificationSequence": REMOVE,
    "PerformingPhysicianName": REMOVE,
    "PerformingPhysicianIdentificationSequence": REMOVE,
    "NameOfPhysiciansReadingStudy": REMOVE,
    "PhysiciansReadingStudyIdentificationSequence": REMOVE,
    "RequestingPhysician": REMOVE,
    "OperatorsName": REMOVE,
    "OperatorIdentificationSequence": REMOVE,
    "RequestAttributesSequence": REMOVE,
    "RequestedProcedureDescription": REMOVE,
    "RequestedProcedureID": REMOVE,
    "ReferencedStudySequence": REMOVE,
    "ReferencedPerformedProcedureStepSequence": REMOVE,
    "PerformedProcedureStepID": REMOVE,
    "PerformedProcedureStepDescription": REMOVE,
    "PerformedProcedureStepStartDate": REMOVE,
    "PerformedProcedureStepStartTime": REMOVE,
    "ProtocolName": REMOVE,
    "ImageComments": REMOVE,
    "DerivationDescription": REMOVE,
    "AcquisitionComments": REMOVE,
    # Institution and equipment
    "InstitutionName": REMOVE,
    "InstitutionAddress": REMOVE,
    "InstitutionalDepartmentName": REMOVE,
    "InstitutionCodeSequence": REMOVE,
    "StationName": REMOVE,
    "DeviceSerialNumber": REMOVE,
    "DeviceUID": REMOVE,
    "ManufacturerModelName": REMOVE,
    "SoftwareVersions": REMOVE,
    "PlateID": REMOVE,
    "DetectorID": REMOVE,
    "GantryID": REMOVE,
    "CassetteID": REMOVE,
    # Set again below: an incoming value must not survive.
    "PatientIdentityRemoved": REMOVE,
    "DeidentificationMethod": REMOVE,
    "DeidentificationMethodCodeSequence": REMOVE,
}

#: Free-text attributes that describe the acquisition, not the person: kept.
SAFE_TEXT = frozenset(
    {
        "Manufacturer",
        "CodeValue",
        "CodingSchemeDesignator",
        "CodingSchemeVersion",
        "CodeMeaning",
        "ContextIdentifier",
        "MappingResource",
        "ConvolutionKernel",
        "WindowCenterWidthExplanation",
        "ChannelLabel",
        "LossyImageCompressionMethod",
        "PixelPresentation",
        "VolumetricProperties",
        "RescaleType",
        "FilterType",
        "ImageTypeText",
    }
)
_FREE_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "AS", "AE"})
_DATE_VRS = frozenset({"DA", "DT", "TM"})
_WELL_KNOWN_UID_ROOT = "1.2.840.10008."
#: PS3.16 CID 7050: Basic Application Confidentiality Profile.
BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
METHOD = "PS3.15 E.1 Basic Application Level Confidentiality Profile"  # LO: ≤ 64


class UIDMap:
    """Original UID → replacement, consistent within one export and not reversible outside it.

    Replacements are hashes of the original with this export's random secret (pydicom's
    ``generate_uid`` entropy sources), so the same original always maps to the same new UID here.
    """

    def __init__(self, secret: str | None = None) -> None:
        self._secret = secret or secrets.token_hex(16)
        self.mapping: dict[str, str] = {}

    def __call__(self, uid: str) -> str:
        uid = uid.strip("\0 ")
        if not uid or uid.startswith(_WELL_KNOWN_UID_ROOT):
            return uid
        new = self.mapping.get(uid)
        if new is None:
            new = str(generate_uid(entropy_srcs=[self._secret, uid]))
            self.mapping[uid] = new
        return new


@dataclass
class Pseudonym:
    """The dummy identity of the exported patient (D in Table E.1-1)."""

    patient_name: str
    patient_id: str

    @classmethod
    def random(cls) -> Pseudonym:
        token = secrets.token_hex(4).upper()
        return cls(patient_name=f"ANON^{token}", patient_id=f"ANON-{token}")


def deidentify_dataset(ds: Dataset, uids: UIDMap, pseudonym: Pseudonym) -> Dataset:
    """De-identify ``ds`` in place (and its file meta) and return it."""
    ds.remove_private_tags()
    _clean(ds, uids, pseudonym)
    # The 128-byte preamble is free for applications (PS3.10 §7.1) and may hold a TIFF header
    # with its own tags: zeroed.
    if getattr(ds, "preamble", None) is not None:
        ds.preamble = b"\0" * 128
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        for keyword in ("SourceApplicationEntityTitle", "PrivateInformationCreatorUID"):
            if keyword in meta:
                delattr(meta, keyword)
        if "PrivateInformation" in meta:
            del meta.PrivateInformation
        if "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = uids(str(meta.MediaStorageSOPInstanceUID))
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = BASIC_PROFILE_CODE
    ds.DeidentificationMethodCodeSequence = Sequence([code])
    ds.LongitudinalTemporalInformationModified = "REMOVED"
    return ds


def _clean(ds: Dataset, uids: UIDMap, pseudonym: Pseudonym) -> None:
    for element in list(ds):
        tag = element.tag
        group = tag.group
        if 0x5000 <= group <= 0x50FF and group % 2 == 0:  # curves (retired): all of them
            del ds[tag]
            continue
        if 0x6000 <= group <= 0x60FF and tag.element in (0x3000, 0x4000):  # overlay data, comments
            del ds[tag]
            continue
        action = ACTIONS.get(element.keyword)
        if action is not None:
            _apply(ds, element, action, pseudonym)
            continue
        vr = element.VR
        if vr == "SQ":
            for item in element.value or []:
                _clean(item, uids, pseudonym)
        elif vr == "UI":
            _map_uids(element, uids)
        elif vr == "PN":
            element.value = None  # Z: type 2 attributes stay present
        elif _removed_by_kind(vr, element.keyword):
            del ds[tag]


def _removed_by_kind(vr: str, keyword: str) -> bool:
    """Dates and times, free text not known to be technical, and UN (content unknown)."""
    return vr in _DATE_VRS or vr == "UN" or (vr in _FREE_TEXT_VRS and keyword not in SAFE_TEXT)


def _apply(ds: Dataset, element: DataElement, action: str, pseudonym: Pseudonym) -> None:
    if action == REMOVE:
        del ds[element.tag]
    elif action == EMPTY:
        element.value = None
    elif action == DUMMY:
        element.value = (
            pseudonym.patient_name if element.keyword == "PatientName" else pseudonym.patient_id
        )


def _map_uids(element: DataElement, uids: UIDMap) -> None:
    value = element.value
    if value is None or value == "":
        return
    if element.VM > 1:
        element.value = [uids(str(v)) for v in value]
    else:
        element.value = uids(str(value))


def burned_in(ds: Dataset) -> bool:
    """Burned-in Annotation (0028,0301) says identifying text is in the pixels."""
    return str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES"


# -- a study ----------------------------------------------------------------------------------


@dataclass
class Skipped:
    sop_instance_uid: str
    reason: str


@dataclass
class DeidentifiedStudy:
    """The de-identified instances of one study, ready to write out."""

    study_uid: str  # the new one
    pseudonym: Pseudonym
    files: list[tuple[str, bytes]] = field(default_factory=list)  # (relative path, Part 10)
    skipped: list[Skipped] = field(default_factory=list)

    def zip_bytes(self) -> bytes:
        """A zip of the Part 10 files and a ``README.txt`` (the profile, what was left out)."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in self.files:
                archive.writestr(name, data)
            archive.writestr("README.txt", self.readme())
        return buffer.getvalue()

    def readme(self) -> str:
        lines = [
            f"De-identified with {METHOD}.",
            f"Study {self.study_uid}, patient {self.pseudonym.patient_id}.",
            f"{len(self.files)} instances.",
        ]
        for skipped in self.skipped:
            lines.append(f"Left out {skipped.sop_instance_uid}: {skipped.reason}")
        return "\n".join(lines) + "\n"


def deidentify_instances(
    parts: Iterable[tuple[str, bytes | None]],
    *,
    uids: UIDMap | None = None,
    pseudonym: Pseudonym | None = None,
) -> DeidentifiedStudy:
    """De-identify one study's Part 10 instances ((SOP Instance UID, bytes) pairs; None for an
    object missing from storage, which is listed as left out).

    Files are named ``<series number or index>/<instance>.dcm`` under the new UIDs.
    """
    uids = uids or UIDMap()
    pseudonym = pseudonym or Pseudonym.random()
    result = DeidentifiedStudy(study_uid="", pseudonym=pseudonym)
    series_dirs: dict[str, str] = {}
    for sop_uid, data in parts:
        if data is None:
            result.skipped.append(Skipped(sop_uid, "missing from the object store"))
            continue
        try:
            ds = dcmread(io.BytesIO(data))
        except Exception as exc:  # a stored object that no longer parses: say so, go on
            result.skipped.append(Skipped(sop_uid, f"unreadable: {type(exc).__name__}"))
            continue
        if burned_in(ds):
            result.skipped.append(
                Skipped(sop_uid, "Burned-in Annotation YES: pixels would need cleaning")
            )
            continue
        deidentify_dataset(ds, uids, pseudonym)
        result.study_uid = str(ds.get("StudyInstanceUID", "")) or result.study_uid
        series = str(ds.get("SeriesInstanceUID", ""))
        folder = series_dirs.setdefault(series, f"series{len(series_dirs) + 1:03d}")
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        result.files.append((f"{folder}/{ds.SOPInstanceUID}.dcm", out.getvalue()))
    return result


def _load(store: ObjectStore, key: str) -> bytes | None:
    try:
        return store.get(key)
    except ObjectNotFound:  # an index row without its object (``remote-dx fsck`` repairs)
        log.error("de-identified export: %s is missing from the object store", key)
        return None


def deidentify_study(
    session: Session,
    store: ObjectStore,
    study_uid: str,
    *,
    scope: ColumnElement[bool] | None = None,
) -> DeidentifiedStudy:
    """Read a study's instances from the index and store and de-identify them.

    ``scope`` is the caller's visibility condition over ``studies`` outer-joined to
    ``worklist_items`` (the API passes the worklist's ``visibility(user)``); None (the CLI, run
    by the operator) means any study. NotFound when nothing matches, visible or not.
    """
    statement = (
        select(Instance.sop_instance_uid, Instance.object_key)
        .join(Series, Series.id == Instance.series_pk)
        .join(Study, Study.id == Series.study_pk)
        .where(Study.study_uid == study_uid)
        .order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)
    )
    if scope is not None:
        statement = statement.outerjoin(WorklistItem, WorklistItem.study_pk == Study.id).where(
            scope
        )
    rows = session.execute(statement).all()
    if not rows:
        raise NotFound(f"study {study_uid} not found")
    result = deidentify_instances((uid, _load(store, key)) for uid, key in rows)
    log.info(
        "study %s de-identified as %s: %d instances, %d left out",
        study_uid,
        result.study_uid,
        len(result.files),
        len(result.skipped),
    )
    return result
